"""napari plugin of cellcut: train, refine, segment and evaluate from the viewer.

A thin layer over the Python API (``cellcut.train``, ``cellcut.refine``, ``cellcut.segment``,
``cellcut.metrics.evaluate``). Long work runs in a worker thread; the training loop reports
through a :class:`~cellcut.training.TrainCallback` that fills a queue, which the widget drains on a
timer in the GUI thread, so the core never imports Qt. Needs ``pip install 'cellcut[napari]'``.
"""
