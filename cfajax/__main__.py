import sys

from cfajax._cli import main

sys.exit(main())
