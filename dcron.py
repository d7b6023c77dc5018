"""Entry point of the dcron executable."""

import sys

if __name__ == "__main__":
    from dcron import spawnd

    if sys.argv[1:2] == [spawnd.SUBCOMMAND]:
        # The node's process spawner (dcron.spawnd), started by the node.
        spawnd.main()
        sys.exit(0)

    from dcron.cli import main

    sys.exit(main())
