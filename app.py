"""A web page over magicme: generate with an identity, train a new one from photos, edit a clip.

    python app.py [--config configs/sample/example.yaml] [--train-config configs/train/example.yaml] [--port 7860]
    python app.py --share              # a public gradio.live link (only when asked)
    python app.py --host 0.0.0.0       # reachable from the network (only when asked; the default is 127.0.0.1)

Needs the `app` extra (pip install -e ".[app]"). The page builds the same configs sample.py and train.py read,
checks them the same way and runs the same code; every result is a normal run folder. See docs/app.md.
"""

import argparse
import os
import sys

from magicme.cli import quiet_libraries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sample/example.yaml",
                        help="sampling config: models, embeddings_dir, output_dir and the form's defaults")
    parser.add_argument("--train-config", default="configs/train/example.yaml",
                        help="training config for the Train tab (name, photos, class word and steps come from the page)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--max-clip-seconds", type=float, default=60.0, help="longest clip the Edit tab accepts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    quiet_libraries()
    from magicme.errors import ConfigError
    from magicme.limits import MAX_UPLOAD_MB

    try:
        from magicme.webapp.ui import App, build_ui
    except ImportError as err:
        print(f"error: {err.name}: not installed; pip install -e '.[app]'", file=sys.stderr)
        return 2
    try:
        app = App(args.config, args.train_config, max_clip_seconds=args.max_clip_seconds)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    page = build_ui(app)
    page.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                        allowed_paths=app.served_folders(), show_error=False, footer_links=[],
                        max_file_size=f"{MAX_UPLOAD_MB}mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
