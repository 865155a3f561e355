"""Literate research workbench that turns small language models into compressed, specialised agents

Modules:

- `agent_forge.foundation.methods`: One pattern for every table of named methods: an entry with its paper, a decorator that registers a function where it is defined, and `get(name)` that says which names exist.
- `agent_forge.merge.evomerge`: Evolutionary search over merge recipes: a genetic algorithm over method and parameters, and CMA-ES over per-layer weights and densities; fitness measured on held-out data, cached by recipe hash, resumable.
- `agent_forge.merge.mergekit`: Read mergekit's YAML merge configs and run them on local Hugging Face checkpoints with `agent_forge.merge.methods`, writing a Hugging Face checkpoint.
- `agent_forge.merge.methods`: Model-merging operators on state dicts (linear, SLERP, task arithmetic, TIES, DARE, Breadcrumbs, passthrough) and data-flow-space layer routing (DFS), each registered by name with its paper.
- `agent_forge.runs.report`: What every phase notebook starts with, and the tables it shows: `start_phase` opens the run folder, tracking, registry, seed and timer from the notebook's parameters; `Table` formats measured numbers.
- `agent_forge.training.optim`: Gradient filters that amplify slow gradients (Grokfast), Newton-Schulz orthogonalised momentum (Muon), and the optimizer that combines them with AdamW for the parameters Muon is not meant for.
- `agent_forge.training.train`: One loop for every phase that trains a language model: Hugging Face `accelerate` for devices, a warm-up + cosine schedule the optimizer really reads, gradient clipping, a compact progress line, and offline wandb logging into the run folder."""

__version__ = "0.1.0"

import warnings as _warnings  # noqa: E402

# transformers and huggingface_hub import `tqdm.auto`, which warns "IProgress not found" in every Jupyter kernel
# without ipywidgets, so each library notebook and phase report would open with it. Our own progress is printed
# as lines (training.train), so that one message is filtered, nothing else.
_warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

# Importing the package registers Cognate with transformers' Auto classes, so that
# `AutoModelForCausalLM.from_pretrained(dir)` loads a saved Agent Forge model.
from agent_forge.models import cognate as _cognate  # noqa: E402,F401
