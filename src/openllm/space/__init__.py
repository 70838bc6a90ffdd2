"""The Space: build it from this repository by the manifest (space.toml) and sync it to a hub.

``build`` (manifest -> tree, dependencies, generated files), ``sync`` (change detection, validation,
commit, retries, conflicts, rollback); ``state`` records each sync. The Gradio app itself is ``openllm.app``.
"""
