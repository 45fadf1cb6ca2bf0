"""Rendering of hand and object meshes: the shared camera convention and pyrender import, and the annotate stage."""
