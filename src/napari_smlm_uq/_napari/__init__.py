"""The napari plugin: reader, sample data and three dock widgets (npe2 manifest ``napari.yaml``).

Only this subpackage imports napari or Qt; the numerics live in the core modules.
"""
