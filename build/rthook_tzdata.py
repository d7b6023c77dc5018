"""PyInstaller runtime hook: import the tzdata package from the bundled zip.

dcron.spec ships the time zone database as one tzdata.zip instead of ~600
files, because a one-file executable unpacks every file at each start. zoneinfo
finds the zones through ``importlib.resources``, which reads them from the zip.
"""

import os
import sys

sys.path.append(os.path.join(sys._MEIPASS, "tzdata.zip"))
