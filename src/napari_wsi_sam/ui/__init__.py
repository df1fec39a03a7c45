"""The napari plugin: reader, writer, sample data and the WSI-SAM dock widget.

A thin shell: every action goes to a Qt-free `session.AnnotationSession`; these modules only
build controls, keep napari layers in step with the session, and convert napari's (row, col)
µm world coordinates to level-0 pixels (`coords`). Importing the package keeps triton out of
this process when there is no GPU (`_triton`), before the model is loaded.
"""

from ._triton import keep_triton_out_without_a_gpu

keep_triton_out_without_a_gpu()
