"""Training a head from the objects annotated in a session, off the UI thread.

The data: the live objects of the chosen classes in the session's store, plus other slides'
stores or GeoJSON files of this slide that the user adds; the scale: the session's HR µm/px.
The head trains into a fresh folder in the cache and is measured against SAM on held-out
objects (`session.own_head`); installing it (`install`) is a separate, explicit step, so a
cancelled or disappointing run changes nothing the user relies on. Qt-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TrainingError
from ..model import registry
from ..paths import cache_home
from ..pipeline.objects import store_to_objects
from ..scale import magnification, same_scale
from ..train.datasets import AnnotatedImage, load_data, read_objects
from ..train.heldout_split import plan_head
from .own_head import TrainedHead, train_and_measure
from .own_instances import TrainedInstances, train_and_measure_instances

if TYPE_CHECKING:
    from .annotation_session import AnnotationSession


def training_data(session: AnnotationSession, classes: Iterable[str], *,
                  more: Iterable[Path] = ()) -> list[AnnotatedImage]:
    """The session slide's objects of `classes`, plus `more`: slide files (their stores) and
    GeoJSON / annotation files of this slide."""
    wanted = list(classes)
    if not wanted:
        raise TrainingError("choose the classes to train on (objects you annotated)")
    slide = session.slide
    mpp = slide.require_mpp()[0]
    objects = list(store_to_objects(session.store, classes=wanted))
    images = [AnnotatedImage(Path(slide.path).stem, Path(slide.path), tuple(objects), mpp)]
    for path in more:
        path = Path(path)
        if path.suffix.lower() in (".geojson", ".json", ".xml", ".parquet"):
            extra = [o for o in read_objects(path, image=Path(slide.path))
                     if o.class_name in wanted]
            images.append(AnnotatedImage(path.stem, Path(slide.path), tuple(extra), mpp))
        else:
            images.extend(load_data([str(path)], classes=None))
    kept = [AnnotatedImage(i.dataset, i.image, tuple(o for o in i.objects
                                                     if o.class_name in wanted), i.mpp)
            for i in images]
    if not any(i.objects for i in kept):
        raise TrainingError(f"no object of class {', '.join(map(repr, wanted))} to train on: "
                            "annotate some first")
    return kept


EPOCHS = 3
"""Passes of a first head: a head from 100 objects in minutes on a 2-core CPU."""


def train_head(session: AnnotationSession, classes: Iterable[str], *, more: Iterable[Path] = (),
               continue_from: Path | None = None, epochs: int = EPOCHS,
               on_step: Callable[..., None] | None = None,
               should_stop: Callable[[], bool] | None = None, seed: int = 0) -> TrainedHead:
    """Plan (held-out split), train and measure a head at the session's magnification."""
    from ..train.trainer import TrainConfig

    classes = list(classes)
    data = training_data(session, classes, more=more)
    plan = plan_head(data, hr_mpp=session.hr_mpp, seed=seed)
    n = plan.n_train
    views = max(4, min(24, -(-n // 6)))  # about 6 objects a view: a first head in minutes
    config = TrainConfig(views_per_image=views, epochs=epochs, seed=seed)
    out = (cache_home() / "training" / Path(session.slide.path).stem
           / time.strftime("%Y%m%d-%H%M%S"))
    return train_and_measure(plan, out, config=config, device=session.device,
                             init_head=continue_from, parts=session.mobile_parts(),
                             on_step=on_step, should_stop=should_stop, seed=seed,
                             structure=", ".join(classes))


INSTANCE_EPOCHS = 20
"""Passes of an instance decoder trained in the widget (its views are few: minutes a pass)."""


def train_instances(session: AnnotationSession, classes: Iterable[str], *,
                    more: Iterable[Path] = (), epochs: int = INSTANCE_EPOCHS,
                    on_step: Callable[..., None] | None = None,
                    should_stop: Callable[[], bool] | None = None, seed: int = 0
                    ) -> TrainedInstances:
    """Train an instance decoder on the annotated objects at the session's magnification and
    measure it on held-out blocks (`session.own_instances`). Annotate every object of the
    regions you annotate: the decoder learns that unannotated places near objects are
    background."""
    from ..train.instance_trainer import InstanceTrainConfig

    classes = list(classes)
    data = training_data(session, classes, more=more)
    config = InstanceTrainConfig(hr_mpp=session.hr_mpp, epochs=epochs, seed=seed)
    out = (cache_home() / "training" / Path(session.slide.path).stem
           / f"instances-{time.strftime('%Y%m%d-%H%M%S')}")
    return train_and_measure_instances(data, out, config=config, seed=seed,
                                       device=session.device, parts=session.mobile_parts(),
                                       structure=", ".join(classes), on_step=on_step,
                                       should_stop=should_stop)


def install_instances(session: AnnotationSession, trained: TrainedInstances) -> Any:
    """Put a measured instance decoder into the registry; Segment all uses it where its
    held-out PQ is the best at its magnification (`instance_registry`)."""
    from ..model.instance_registry import install_instance_decoder

    name = "-".join([Path(session.slide.path).stem, *trained.classes, "instances",
                     magnification(trained.hr_mpp)])
    return install_instance_decoder(trained.path, name=name)


def install(session: AnnotationSession, trained: TrainedHead) -> registry.ModelChoice:
    """Put a measured head into the registry (the user's heads); it becomes the default at
    its magnification only when it beat SAM held out (`registry.rule_at`)."""
    name = "-".join([Path(session.slide.path).stem, *trained.plan.classes,
                     magnification(trained.plan.hr_mpp)])
    head = registry.install_head(trained.path, name=name)
    return registry.ModelChoice("wsi-sam", head=head)


def current_head(session: AnnotationSession) -> Any:
    """The head in use when it was trained at the session's scale (to continue from)."""
    head = session.choice.head
    if head is None or not same_scale(head.hr_mpp, session.hr_mpp):
        return None
    return head.path
