"""`egressgw webhook`: the validating admission webhook for egressgw.io objects.

A service beside the agent and the gateway (same layer): `server` answers AdmissionReviews with the pure decision of
`appliance.api.admission` (THE validation of the services and `egressgw validate`), `bootstrap` and `certificates`
make and store its TLS certificates without cert-manager and put the CA into the webhook configuration.
"""
