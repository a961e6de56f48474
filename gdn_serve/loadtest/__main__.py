import sys

from gdn_serve.loadtest.main import main

sys.exit(main())
