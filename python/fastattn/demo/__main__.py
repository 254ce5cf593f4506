import sys

from fastattn.demo.cli import main

sys.exit(main())
