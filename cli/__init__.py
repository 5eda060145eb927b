"""The `c3fs` command line. Importing it starts reading ahead, in the background, the files
the command is about to load (`c3fs.preload`), before click and the library are imported."""

import sys

from c3fs import preload

preload.start(sys.argv[1:])
