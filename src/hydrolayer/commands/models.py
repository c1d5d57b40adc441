"""``hydrolayer models``."""

from __future__ import annotations


class CLICommand:
    """list the trained models shipped with hydrolayer, with their model cards"""

    name = "models"
    example = "hydrolayer models\nhydrolayer models --card unet-v1"

    @staticmethod
    def add_arguments(parser):
        parser.add_argument("--card", default=None, metavar="NAME", help="print the full model card of NAME")

    @staticmethod
    def run(args):
        from ..registry import models_text

        print(models_text(card=args.card))
