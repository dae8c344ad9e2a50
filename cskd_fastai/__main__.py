"`python -m cskd_fastai ...` (also what `accelerate launch -m cskd_fastai` runs)."
from .cli import main

main()
