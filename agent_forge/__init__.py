"""Literate research workbench that turns small language models into compressed, specialised agents"""

__version__ = "0.1.0"

import warnings as _warnings  # noqa: E402

# transformers and huggingface_hub import `tqdm.auto`, which warns "IProgress not found" in every Jupyter kernel
# without ipywidgets, so each library notebook and phase report would open with it. Our own progress is printed
# as lines (training.train), so that one message is filtered, nothing else.
_warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

# Importing the package registers Cognate with transformers' Auto classes, so that
# `AutoModelForCausalLM.from_pretrained(dir)` loads a saved Agent Forge model.
from agent_forge.models import cognate as _cognate  # noqa: E402,F401
