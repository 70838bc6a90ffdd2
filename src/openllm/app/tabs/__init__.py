"""The app's tabs, one module each: ``build(...)`` lays out the tab's components, wires the events that stay
inside it and returns a small dataclass of what the other tabs' events need (:mod:`openllm.app.ui` wires those).
"""
