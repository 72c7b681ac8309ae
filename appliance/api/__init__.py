"""The API: manifests, CRD schema, rendering, validation. Pure."""
