"""napari integration: npe2 hooks and magicgui widgets. The only package that imports Qt or napari."""
