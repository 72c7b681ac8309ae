"""`python -m appliance.cli ...` runs the `egressgw` command line."""

import sys

from appliance.cli.main import main

sys.exit(main())
