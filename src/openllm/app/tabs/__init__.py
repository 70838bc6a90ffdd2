"""The app's tabs, one module each: ``build(...)`` lays out the tab's components, wires the events that stay
inside it and returns a small dataclass of what the other tabs' events need (:mod:`openllm.app.ui` wires those).
"""

# The app's tabs in order: (id, label, what it does). The one list: ui.build_app makes a gr.Tab of each (and
# fails on one it does not build), and the Space's README lists them from here (read as a literal, with ast).
TABS = (
    ("train", "Train", "pick a preset or set the model size and the rest, choose a corpus; Start and Stop"),
    ("monitor", "Monitor", "step, ETA, tokens/s, loss and validation-loss curves, the log, memory in use"),
    ("generate", "Generate", "prompt any local run or hub model@version, with sampling controls"),
    ("chat", "Chat", "talk to a fine-tuned run through the chat template"),
    ("models", "Models", "runs and their checkpoints: push to the hub, continue, delete, fine-tune; hub versions"),
    ("evaluate", "Evaluate", "a run's validation loss, perplexity and standard or uploaded tasks"),
    ("export", "Export", "a run in Hugging Face, ONNX, GGUF or native format, zipped for download"),
    ("compare", "Compare", "runs' loss curves on one plot; learning rate and gradient norm"),
    ("help", "Help", "the instructions (HELP.md)"),
)
