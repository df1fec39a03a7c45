"""The Model, Head file and HR magnification fields, and the rules that tie them together.

- The model list is the registry's (`model.registry.choices`): heads show as
  'wsi-sam · nuclei · 40x'; a head file given by path joins the list.
- Until the user picks a model, the model follows the measured default of the magnification
  (SAM where no head was measured); the tooltip says why.
- Picking a head sets the magnification to the head's; picking a magnification the head was
  not trained at gives a one-line warning naming both scales (the user may go on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, FileEdit

from ..errors import WsiSamError
from ..model import registry
from ..scale import DEFAULT_HR_MPP, MAGNIFICATIONS, magnification, mpp_text, same_scale

Notify = Callable[[str, str], None]
"""(one-line message, level: "info", "warning" or "error")."""


def magnification_choice(mpp: float) -> tuple[str, float]:
    """A magnification list entry: ('10x · 1.0 µm/px', 1.0)."""
    name = magnification(mpp)
    return (name if name.endswith("µm/px") else f"{name} · {mpp_text(mpp)} µm/px"), mpp


class ModelControls:
    """The three fields; `changed` is called after the model or the scale changed."""

    def __init__(self, *, notify: Notify, changed: Callable[[], None]) -> None:
        self._notify = notify
        self._changed = changed
        self._choices = {c.spec: c for c in registry.choices()}
        self._picked = False  # until the user picks one, the model follows the default
        self._quiet = False  # while the controls change themselves
        self._mags = [magnification_choice(mpp) for _, mpp in MAGNIFICATIONS]
        self.model = ComboBox(name="model", label="Model", choices=self._model_list)
        self.head_file = FileEdit(name="head_file", label="Head file",
                                  mode=FileDialogMode.EXISTING_FILE,
                                  filter="*.pt", value=None,
                                  tooltip="A WSI-SAM head .pt (from train); it joins the "
                                          "model list and sets its magnification")
        self.magnification = ComboBox(name="magnification", label="HR magnification",
                                      choices=self._mag_list,
                                      value=DEFAULT_HR_MPP, tooltip="LR context: half of it")
        self._select_default()
        self.model.changed.connect(self._on_model)
        self.head_file.changed.connect(self._on_head_file)
        self.magnification.changed.connect(self._on_magnification)

    @property
    def widgets(self) -> list[Any]:
        return [self.model, self.head_file, self.magnification]

    def choice(self) -> registry.ModelChoice:
        """The registry's choice behind the Model list."""
        return self._choices[str(self.model.value)]

    def hr_mpp(self) -> float:
        return float(self.magnification.value)

    def labels(self) -> list[str]:
        return [label for label, _ in self._model_list()]

    def select(self, choice: registry.ModelChoice) -> None:
        """Pick `choice` as the user would (it joins the list; the scale follows its head)."""
        self.model.value = self._add(choice)

    def _model_list(self, _widget: Any = None) -> list[tuple[str, str]]:
        return [(c.label, spec) for spec, c in self._choices.items()]

    def _mag_list(self, _widget: Any = None) -> list[tuple[str, float]]:
        return list(self._mags)

    def _add(self, choice: registry.ModelChoice) -> str:
        if choice.spec not in self._choices:
            self._choices[choice.spec] = choice
            self.model.reset_choices()
        return choice.spec

    def _select_default(self) -> None:
        choice, reason = registry.default_choice(self.hr_mpp())
        self._quiet = True
        try:
            self.model.value = self._add(choice)
        finally:
            self._quiet = False
        self.model.tooltip = (f"Default at {magnification(self.hr_mpp())}: {choice.label}, "
                              f"because {reason} (docs/results.md)")

    def _on_model(self, _value: Any = None) -> None:
        if self._quiet:
            return
        self._picked = True
        trained = self.choice().hr_mpp
        if trained is not None and not same_scale(trained, self.hr_mpp()):
            self._set_magnification(trained)  # the scale follows the head
        self.model.tooltip = self.choice().base.summary
        self._changed()

    def _on_head_file(self, value: Any = None) -> None:
        text = str(value or "").strip()
        if text in ("", "."):
            return
        try:
            head = registry.find_head(Path(text))
        except WsiSamError as error:
            self._notify(str(error), "error")
            return
        self.model.value = self._add(registry.ModelChoice("wsi-sam", head=head))
        self._notify(f"Head {head.name}: {head.label}, HR {mpp_text(head.hr_mpp)} µm/px",
                     "info")

    def _set_magnification(self, mpp: float) -> None:
        if not any(same_scale(mpp, value) for _, value in self._mags):
            self._mags.append(magnification_choice(mpp))
            self._mags.sort(key=lambda item: item[1])
            self.magnification.reset_choices()
        value = next(v for _, v in self._mags if same_scale(mpp, v))
        self._quiet = True
        try:
            self.magnification.value = value
        finally:
            self._quiet = False

    def _on_magnification(self, _value: Any = None) -> None:
        if self._quiet:
            return
        if not self._picked:
            self._select_default()
        else:
            warning = registry.scale_warning(self.choice(), self.hr_mpp())
            if warning:
                self._notify(warning, "warning")
        self._changed()
