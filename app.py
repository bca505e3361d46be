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


def say(message: str) -> None:
    """A start-up step on stderr at once: the imports alone can take a minute on a slow disk."""
    print(f"app: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    quiet_libraries()
    from magicme.errors import ConfigError
    from magicme.limits import MAX_UPLOAD_MB

    say("importing gradio, torch and diffusers (up to a minute or two the first time) ...")
    try:
        from magicme.webapp.ui import App, build_ui
    except ImportError as err:
        print(f"error: {err.name}: not installed; pip install -e '.[app]'", file=sys.stderr)
        return 2
    say(f"checking {args.config} and {args.train_config} ...")
    try:
        app = App(args.config, args.train_config, max_clip_seconds=args.max_clip_seconds)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    say("building the page ...")
    page = build_ui(app)
    say(f"starting the server on {args.host}:{args.port} ...")
    # quiet: gradio's own hint names share=True, our flag is --share
    page.queue().launch(server_name=args.host, server_port=args.port, share=args.share,
                        allowed_paths=app.served_folders(), show_error=False, footer_links=[], quiet=True,
                        max_file_size=f"{MAX_UPLOAD_MB}mb", prevent_thread_lock=True)
    say(f"open http://{args.host}:{args.port}/ (models load on the first click; Ctrl+C stops the app)"
        + (f"; public link: {page.share_url}" if args.share else "; a public link: python app.py --share"))
    page.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
