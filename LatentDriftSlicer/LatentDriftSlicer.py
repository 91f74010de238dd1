"""LatentDriftSlicer: Latent Drift counterfactuals, LDSeg segmentation and fine-tuning in 3D Slicer.

The module is a thin GUI over the engine in ``Logic/`` (imported as ``latentdrift``): every action
runs a ``latentdrift`` command in a child process (``latentdrift.bridge.processes``) that writes its results
as files by role, and the panel loads them as new nodes (``latentdrift.bridge.console``), so the GUI never
freezes and Cancel ends the whole process tree without waiting for it.

Engine registration: when this file is imported (Slicer does it at start-up), :func:`registerEngine`
loads ``Logic/__init__.py`` as the package ``latentdrift`` with ``importlib`` (its submodules are found
in ``Logic/`` through the spec's ``submodule_search_locations``). ``Logic`` itself is never put on
``sys.path``, so its modules (``errors``, ``models``, …) cannot shadow other packages. A pip install
maps the same folder to the same name (``pyproject.toml``). Nothing heavy is imported into Slicer's
process: the engine modules this file imports load no torch, psutil, tqdm or model library (devices
are listed by a child process), and the engine's dependencies are installed on first use, after one
confirmation. The module needs 3D Slicer 5.10 or later (Python 3.12); an older Slicer shows one
message instead of the panel, and this file imports no engine module there.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

ENGINE_FOLDER = Path(__file__).resolve().parent / "Logic"
SETTINGS_GROUP = "LatentDriftSlicer"
POLL_INTERVAL_MS = 200
MINIMUM_SLICER_VERSION = (5, 10)
"""The oldest Slicer the module runs in: 5.10 ships Python 3.12 (5.8 ships 3.9, which the engine cannot run on)."""


def slicerVersion() -> tuple[int, int]:
    """This Slicer's ``(major, minor)`` version."""
    return (int(slicer.app.majorVersion), int(slicer.app.minorVersion))


def unsupportedMessage() -> str:
    """The one message an older Slicer shows instead of the panel ('' where the module runs)."""
    if slicerVersion() >= MINIMUM_SLICER_VERSION:
        return ""
    minimum = ".".join(map(str, MINIMUM_SLICER_VERSION))
    version = ".".join(map(str, slicerVersion()))
    return (
        f"LatentDrift needs 3D Slicer {minimum} or later (Python 3.12); this is Slicer {version}. "
        f"Install a current 3D Slicer from download.slicer.org to use it."
    )


def registerEngine() -> None:
    """Make ``Logic/`` importable as ``latentdrift`` (once; an already imported engine is kept)."""
    if "latentdrift" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "latentdrift", ENGINE_FOLDER / "__init__.py", submodule_search_locations=[str(ENGINE_FOLDER)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load the LatentDrift engine from '{ENGINE_FOLDER}'.")
    module = importlib.util.module_from_spec(spec)
    sys.modules["latentdrift"] = module
    spec.loader.exec_module(module)


SUPPORTED = not unsupportedMessage()
if SUPPORTED:
    registerEngine()
    # The engine's light modules: its settings hold every option's default (no torch, no SimpleITK).
    from latentdrift.core.settings import (
        CounterfactualSettings,
        EditSettings,
        FrontEndSettings,
        SegmentSettings,
        slider_range,
    )
    from latentdrift.core.values import AXES, STEPS_RANGE
    from latentdrift.counterfactual.modes import INSTRUCT, volume_edit_names
    from latentdrift.finetune import SCHEMES
    from latentdrift.finetune.config import FinetuneConfig

# --------------------------------------------------------------------------- module


class LatentDriftSlicer(ScriptedLoadableModule):
    """Module description shown in Slicer (title, categories, help, acknowledgement)."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LatentDrift"
        self.parent.categories = ["Segmentation", "Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["LatentDriftSlicer developers"]
        self.parent.helpText = (
            "Counterfactual editing of medical volumes with Latent Drift (InstructPix2Pix, img2img or "
            "direction edits with a drift δ), LDSeg latent-diffusion segmentation with an uncertainty "
            "map, and fine-tuning on your own cohort. Needs 3D Slicer 5.10 or later. Models run in a "
            "separate process: the GUI stays responsive and Cancel stops the work. The same functions "
            "are available in the Python console (<code>import latentdrift.bridge.console</code>) and as the "
            "<code>latentdrift</code> command. See <a href='https://github.com/LatentDriftSlicer/"
            "SlicerLatentDrift/blob/main/docs/slicer-module.md'>the module documentation</a>."
        )
        self.parent.acknowledgementText = (
            'Methods: Yeganeh et al., "Latent Drifting in Diffusion Models for Counterfactual Medical '
            'Image Synthesis", CVPR 2025; Zaman et al., "Latent Diffusion for Medical Image '
            'Segmentation: End to end learning for fast sampling and accuracy". Built on 3D Slicer, '
            "PyTorch, diffusers and MONAI."
        )


# --------------------------------------------------------------------------- parameters


SEXES = ("unknown", "female", "male")

if SUPPORTED:

    @parameterNodeWrapper
    class LatentDriftSlicerParameterNode:
        """The panel's state, saved with the scene. Every field is bound to one widget (SlicerParameterName).

        Engine options take their defaults from the engine's settings (``latentdrift.core.settings``).
        """

        inputVolume: vtkMRMLScalarVolumeNode
        axis: Annotated[str, Choice(AXES)] = CounterfactualSettings.axis
        allSlices: bool = True
        sliceStart: Annotated[int, WithinRange(0, 100000)] = 0
        sliceStop: Annotated[int, WithinRange(0, 100000)] = 1
        seed: Annotated[int, WithinRange(*slider_range(EditSettings, "seed"))] = EditSettings.seed
        preprocess: bool = FrontEndSettings.enabled
        # Counterfactual
        editMode: Annotated[str, Choice(volume_edit_names())] = EditSettings.mode
        instruction: str = ""
        prompt: str = ""
        fromAge: Annotated[float, WithinRange(-1.0, 120.0)] = -1.0
        toAge: Annotated[float, WithinRange(-1.0, 120.0)] = -1.0
        fromSex: Annotated[str, Choice(SEXES)] = "unknown"
        toSex: Annotated[str, Choice(SEXES)] = "unknown"
        fromDiagnosis: str = ""
        toDiagnosis: str = ""
        # δ and guidance as recorded with the model (the two below are then disabled and show them)
        modelSampling: bool = True
        drift: Annotated[float, WithinRange(*slider_range(EditSettings, "drift"))] = EditSettings.drift
        strength: Annotated[float, WithinRange(*slider_range(EditSettings, "strength"))] = (
            EditSettings.strength
        )
        editSteps: Annotated[int, WithinRange(*slider_range(EditSettings, "steps"))] = EditSettings.steps
        guidance: Annotated[float, WithinRange(*slider_range(EditSettings, "guidance"))] = (
            EditSettings.guidance
        )
        imageGuidance: Annotated[float, WithinRange(*slider_range(EditSettings, "image_guidance"))] = (
            EditSettings.image_guidance
        )
        factualReference: bool = EditSettings.factual_reference
        fade: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
        counterfactualVolume: vtkMRMLScalarVolumeNode
        # Segment
        samples: Annotated[int, WithinRange(*slider_range(SegmentSettings, "samples"))] = (
            SegmentSettings.samples
        )
        segmentSteps: Annotated[int, WithinRange(0, STEPS_RANGE[1])] = 0  # 0: the model's default
        probabilities: bool = SegmentSettings.probabilities
        outputSegmentation: vtkMRMLSegmentationNode
        outputUncertainty: vtkMRMLScalarVolumeNode
        # Fine-tune
        cohort: str = ""
        scheme: Annotated[str, Choice(SCHEMES)] = "lora"
        useDrift: bool = True
        finetuneDrift: Annotated[float, WithinRange(*slider_range(EditSettings, "drift"))] = 0.05
        searchDrift: bool = False
        finetuneSteps: Annotated[int, WithinRange(1, 1000000)] = FinetuneConfig.steps
        jobDir: str = ""


# --------------------------------------------------------------------------- widget


class LatentDriftSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Thin: settings come from the parameter node, work is done by the logic/engine."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: LatentDriftSlicerLogic | None = None
        self._parameterNode: Any = None
        self._parameterNodeGuiTag: Any = None
        self._job: Any = None  # a latentdrift.bridge.console NodeJob or TrainingJob
        self._jobButton: Any = None
        self._jobButtonText = ""
        self._lossChart: Any = None
        self._sampleImage: Path | None = None
        self._infoProcess: Any = None  # `latentdrift info` listing the devices
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)

    # ----------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Build the panel from the .ui file and connect it (on an older Slicer: one message instead)."""
        ScriptedLoadableModuleWidget.setup(self)
        if not SUPPORTED:
            message = qt.QLabel(unsupportedMessage())
            message.wordWrap = True
            self.layout.addWidget(message)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LatentDriftSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LatentDriftSlicerLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.startFinetuneButton.connect("clicked(bool)", self.onStartFinetuneButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.ui.addModelFolderButton.connect("clicked(bool)", self.onAddModelFolder)
        self.ui.refreshDevicesButton.connect("clicked(bool)", self.refreshDevices)
        self.ui.cohortFileButton.connect("clicked(bool)", self.onPickCohortFile)
        self.ui.cohortFolderButton.connect("clicked(bool)", self.onPickCohortFolder)
        self.ui.jobDirButton.connect("clicked(bool)", self.onPickJobDir)
        self.ui.cohortLineEdit.connect("editingFinished()", self.updateCohortReport)
        self.ui.fadeSlider.connect("valueChanged(double)", self.onFadeChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modelSamplingCheckBox.connect("toggled(bool)", self.showModelSampling)
        self.ui.modeTabWidget.connect("currentChanged(int)", self.populateModels)
        self.ui.editModeComboBox.connect("currentIndexChanged(int)", self.populateModels)
        self.ui.schemeComboBox.connect("currentIndexChanged(int)", self.populateModels)
        self._timer.connect("timeout()", self.onTimer)

        report = self.cachedDeviceReport()
        self.populateDevices(report)
        if report is None:  # the first time: list the devices in the background
            self.refreshDevices()
        self.populateModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed (or reloaded)."""
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
        self.removeObservers()

    def onReload(self) -> None:
        """Developer mode's Reload: forget the engine's modules too, so that the module file, run again,
        registers the engine anew from ``Logic/`` instead of keeping the old modules."""
        for name in [
            name for name in sys.modules if name == "latentdrift" or name.startswith("latentdrift.")
        ]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        """Called each time the user opens this module."""
        if SUPPORTED:
            self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        """The scene is about to close: forget the parameter node."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        """A new scene: make a fresh parameter node if the module is shown."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Use the scene's parameter node, selecting a volume when none is chosen."""
        assert self.logic is not None
        self.setParameterNode(self.logic.getParameterNode())
        if self._parameterNode is not None and not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, parameterNode: Any) -> None:
        """Bind the panel to ``parameterNode`` (and unbind the previous one)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    def updateButtons(self, caller: Any = None, event: Any = None) -> None:
        """Enable actions that have what they need; the running action's button stays (as Cancel)."""
        p = self._parameterNode
        hasInput = bool(p and p.inputVolume)
        idle = self._job is None
        for button in (self.ui.applyButton, self.ui.previewButton, self.ui.segmentButton):
            button.enabled = (idle and hasInput) or button is self._jobButton
        self.ui.startFinetuneButton.enabled = (idle and bool(p and p.cohort and p.jobDir)) or (
            self.ui.startFinetuneButton is self._jobButton
        )
        self.ui.resumeButton.enabled = idle and bool(p and p.jobDir)
        self.ui.sliceStartSpinBox.enabled = self.ui.sliceStopSpinBox.enabled = bool(p and not p.allSlices)
        self.ui.finetuneDriftSlider.enabled = bool(p and p.useDrift and not p.searchDrift)
        self.ui.driftSlider.enabled = self.ui.guidanceDoubleSpinBox.enabled = bool(p and not p.modelSampling)

    # ----------------------------------------------------------------- devices and models

    @staticmethod
    def cachedDeviceReport() -> dict[str, Any] | None:
        """The last device list a ``latentdrift info`` process gave (kept in the settings), or None."""
        text = qt.QSettings().value(f"{SETTINGS_GROUP}/engineInfo", "")
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def refreshDevices(self) -> None:
        """List the devices again in a child process (torch never loads here); the timer collects the list."""
        assert self.logic is not None
        if self._infoProcess is not None:
            return
        if not self.logic.dependenciesReady():
            self.ui.deviceWarningLabel.text = (
                "Install the dependencies (run any action once) to list the GPUs."
            )
            return
        with slicer.util.tryWithErrorDisplay("Could not list the devices."):
            self._infoProcess = self.logic.startInfo()
            self.ui.refreshDevicesButton.enabled = False
            self.ui.deviceWarningLabel.text = "Listing the devices…"
            self._timer.start()

    def collectDevices(self) -> None:
        """Take the device list of a finished ``latentdrift info`` process, and remember it."""
        process, self._infoProcess = self._infoProcess, None
        self.ui.refreshDevicesButton.enabled = True
        error = process.state.error()
        if error is not None:
            self.ui.deviceWarningLabel.text = f"Could not list the devices: {error}"
            return
        report = process.state.summary
        qt.QSettings().setValue(f"{SETTINGS_GROUP}/engineInfo", json.dumps(report))
        self.populateDevices(report)

    def populateDevices(self, report: dict[str, Any] | None) -> None:
        """Fill the device selector from an ``info`` report (auto and the CPU without one); keep the choice."""
        from latentdrift.bridge.panel_support import device_choices

        saved = qt.QSettings().value(f"{SETTINGS_GROUP}/device", "auto")
        self.ui.deviceComboBox.blockSignals(True)
        self.ui.deviceComboBox.clear()
        for value, label in device_choices(report):
            self.ui.deviceComboBox.addItem(label, value)
        index = self.ui.deviceComboBox.findData(saved)
        self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
        self.ui.deviceComboBox.blockSignals(False)
        self.onDeviceChanged()

    def onDeviceChanged(self, index: int = 0) -> None:
        """Remember the device; warn that the CPU is slow."""
        from latentdrift.bridge.panel_support import CPU_WARNING

        device = self.currentDevice()
        qt.QSettings().setValue(f"{SETTINGS_GROUP}/device", device)
        self.ui.deviceWarningLabel.text = CPU_WARNING if device == "cpu" else ""

    def currentDevice(self) -> str:
        """The device value chosen in the selector."""
        return str(self.ui.deviceComboBox.currentData or "auto")

    def modelFolders(self) -> list[str]:
        """The model folders the user added (remembered in QSettings)."""
        value = qt.QSettings().value(f"{SETTINGS_GROUP}/modelFolders", [])
        return [value] if isinstance(value, str) else list(value or [])

    def populateModels(self, index: int = -1) -> None:
        """Fill the model selector with the models that fit the current tab.

        Preselects the model last chosen for the task, else the task's default model, else the first.
        """
        assert self.logic is not None
        scheme = str(self.ui.schemeComboBox.currentText or "")
        saved = qt.QSettings().value(f"{SETTINGS_GROUP}/model/{self.currentTask()}", "")
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for label, folder in self.logic.modelChoices(self.currentMode(), scheme, self.modelFolders()):
            self.ui.modelComboBox.addItem(label, folder)
        if self.ui.modelComboBox.count == 0:
            self.ui.modelComboBox.addItem("(no model found: add a model folder)", "")
        preferred = (saved, self.logic.defaultModel(self.currentTask()))
        found = (self.ui.modelComboBox.findData(folder) for folder in preferred if folder)
        self.ui.modelComboBox.setCurrentIndex(next((position for position in found if position >= 0), 0))
        self.ui.modelComboBox.blockSignals(False)
        self.showModelSampling()

    def onModelChanged(self, index: int) -> None:
        """Remember the model chosen for this task, and show its δ and guidance."""
        qt.QSettings().setValue(f"{SETTINGS_GROUP}/model/{self.currentTask()}", self.currentModel())
        self.showModelSampling()

    def showModelSampling(self, checked: bool | None = None) -> None:
        """While "The model's δ and guidance" is ticked (``checked``: as the box just became), show the
        values a counterfactual run will use in the sliders it disables."""
        from latentdrift.bridge.panel_support import model_sampling_shown

        p = self._parameterNode
        ticked = p is not None and (p.modelSampling if checked is None else checked)
        if not ticked or self.currentMode() != "counterfactual":
            return
        p.drift, p.guidance = model_sampling_shown(self.currentModel(), self.currentTask())

    def currentModel(self) -> str:
        """The chosen model folder ('' for none)."""
        return str(self.ui.modelComboBox.currentData or "")

    def currentMode(self) -> str:
        """``counterfactual``, ``segment`` or ``finetune``, from the selected tab."""
        return ("counterfactual", "segment", "finetune")[max(self.ui.modeTabWidget.currentIndex, 0)]

    def currentTask(self) -> str:
        """The engine task of the tab: its edit mode on the Counterfactual tab, else ``segment``/``finetune``."""
        mode = self.currentMode()
        return (
            str(self.ui.editModeComboBox.currentText or EditSettings.mode)
            if mode == "counterfactual"
            else mode
        )

    def onAddModelFolder(self) -> None:
        """Ask for a model folder (or a folder of models) and remember it."""
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Model folder")
        if folder:
            folders = [*self.modelFolders(), folder]
            qt.QSettings().setValue(f"{SETTINGS_GROUP}/modelFolders", list(dict.fromkeys(folders)))
            self.populateModels()

    # ----------------------------------------------------------------- fine-tune inputs

    def onPickCohortFile(self) -> None:
        """Pick a cohort CSV."""
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Cohort CSV", "", "CSV (*.csv)")
        if path and self._parameterNode:
            self._parameterNode.cohort = path
            self.updateCohortReport()

    def onPickCohortFolder(self) -> None:
        """Pick a cohort folder."""
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Cohort folder")
        if path and self._parameterNode:
            self._parameterNode.cohort = path
            self.updateCohortReport()

    def onPickJobDir(self) -> None:
        """Pick the job folder."""
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Job folder")
        if path and self._parameterNode:
            self._parameterNode.jobDir = path

    def updateCohortReport(self) -> None:
        """Show a short check of the cohort."""
        from latentdrift.bridge.panel_support import describe_cohort

        if self._parameterNode and self._parameterNode.cohort:
            self.ui.cohortReportLabel.text = describe_cohort(self._parameterNode.cohort)

    # ----------------------------------------------------------------- actions

    def onApplyButton(self) -> None:
        """Counterfactual of the slice range (or Cancel while it runs)."""
        self.runNodeAction(self.ui.applyButton, "Counterfactual failed.", preview=False)

    def onPreviewButton(self) -> None:
        """Counterfactual of the slice shown in the view of the chosen axis only."""
        self.runNodeAction(self.ui.previewButton, "Preview failed.", preview=True)

    def onSegmentButton(self) -> None:
        """Segmentation of the slice range (or Cancel while it runs)."""
        self.runNodeAction(self.ui.segmentButton, "Segmentation failed.", preview=False)

    def runNodeAction(self, button: Any, failure: str, preview: bool) -> None:
        """Start the action of ``button`` in the background, or cancel it when it is the one running."""
        assert self.logic is not None and self._parameterNode is not None
        if self._job is not None:
            self.cancelJob()
            return
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            p, model, device = self._parameterNode, self.currentModel(), self.currentDevice()
            if button is self.ui.segmentButton:
                job = self.logic.startSegment(p, model, device)
            else:
                job = self.logic.startCounterfactual(p, model, device, preview)
            self.startedJob(job, button)

    def onStartFinetuneButton(self) -> None:
        """Start fine-tuning (or Cancel while it runs)."""
        assert self.logic is not None and self._parameterNode is not None
        if self._job is not None:
            self.cancelJob()
            return
        with slicer.util.tryWithErrorDisplay("Could not start fine-tuning.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            job = self.logic.startFinetune(self._parameterNode, self.currentModel(), self.currentDevice())
            self.startedJob(job, self.ui.startFinetuneButton)

    def onResumeButton(self) -> None:
        """Resume the job in the job folder."""
        assert self.logic is not None and self._parameterNode is not None
        with slicer.util.tryWithErrorDisplay("Could not resume the job.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            job = self.logic.resumeFinetune(self._parameterNode.jobDir)
            self.startedJob(job, self.ui.startFinetuneButton)

    def startedJob(self, job: Any, button: Any) -> None:
        """A job runs: its button turns into Cancel, the timer polls it; a training job's chart is shown once."""
        assert self.logic is not None
        self._job, self._jobButton, self._jobButtonText = job, button, button.text
        button.text = "Cancel"
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting…"
        self.ui.logTextEdit.clear()
        if hasattr(job, "new_records"):
            self._lossChart, self._sampleImage = self.logic.showLossChart(), None
        self._timer.start()
        self.updateButtons()

    def cancelJob(self) -> None:
        """Ask the running job's whole process tree to stop; returns at once (the timer sees it end)."""
        self.ui.statusLabel.text = "Cancelling…"
        self._job.cancel()

    # ----------------------------------------------------------------- progress

    def onTimer(self) -> None:
        """Drain the running job's events and new training status; collect a device list that arrived."""
        if self._infoProcess is not None and not self._infoProcess.running:
            self.collectDevices()
        if self._job is not None:
            for event in self._job.poll():
                self.onEvent(event)
            if hasattr(self._job, "new_records"):
                self.showTrainingStatus(self._job.new_records())
                if not self._job.running:
                    self.onJobFinished()
            elif self._job.done:
                self.onJobFinished()
        if self._job is None and self._infoProcess is None:
            self._timer.stop()

    def onEvent(self, event: dict[str, Any]) -> None:
        """Show one engine event: progress bar and ETA, or a log line."""
        kind = event.get("event")
        if kind == "progress":
            self.ui.progressBar.value = int(100 * float(event.get("fraction") or 0.0))
            eta = event.get("eta_s")
            self.ui.statusLabel.text = (
                f"{event.get('message', '')} {event.get('done')}/{event.get('total')}"
                + (f", about {eta:.0f} s left" if eta else "")
            )
        elif kind in ("log", "error"):
            self.ui.logTextEdit.appendPlainText(str(event.get("message", "")))

    def showTrainingStatus(self, records: list[dict[str, Any]]) -> None:
        """Progress, ETA, loss curve (new rows only) and the newest sample image, from the new status records."""
        assert self._parameterNode is not None
        if not records:
            return
        latest = records[-1]
        if latest.get("step") is not None:
            self.ui.finetuneProgressBar.value = int(
                100 * latest["step"] / max(1, self._parameterNode.finetuneSteps)
            )
        if latest.get("eta_s") is not None:
            self.ui.etaLabel.text = (
                f"step {latest.get('step')}, loss {latest.get('loss')}, about {latest['eta_s']:.0f} s left"
            )
        self._lossChart.append(records)
        samples = [self._job.job_dir / str(r["sample_image"]) for r in records if r.get("sample_image")]
        image = next((path for path in reversed(samples) if path.is_file()), None)
        if image is not None and image != self._sampleImage:
            self._sampleImage = image
            self.ui.sampleImageLabel.setPixmap(qt.QPixmap(str(image)).scaledToWidth(256))

    def onJobFinished(self) -> None:
        """Restore the button; select the new nodes or show why the job failed."""
        job, self._job = self._job, None
        if self._jobButton is not None:
            self._jobButton.text = self._jobButtonText
            self._jobButton = None
        self.updateButtons()
        if job is None:
            return
        error = job.error if hasattr(job, "done") else job.process.state.error()
        if error is not None:
            self.ui.statusLabel.text = str(error)
            if type(error).__name__ != "CancelledError":
                slicer.util.errorDisplay(self.logic.explain(error) if self.logic else str(error))
            return
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = "Done."
        if hasattr(job, "done"):
            self.logic.selectResult(self._parameterNode, job.result())

    def onFadeChanged(self, value: float) -> None:
        """Blend between the input (0) and the counterfactual (1) in the slice views."""
        from latentdrift.bridge.console import set_fade

        set_fade(value)


# --------------------------------------------------------------------------- logic


class LatentDriftSlicerLogic(ScriptedLoadableModuleLogic):
    """Thin layer between the panel and ``latentdrift.bridge.console``; usable from scripts without the panel."""

    def getParameterNode(self) -> Any:
        """The module's parameter node (typed)."""
        return LatentDriftSlicerParameterNode(super().getParameterNode())

    # ----------------------------------------------------------------- dependencies

    @staticmethod
    def requirements() -> list[str]:
        """The engine's pip requirements (Resources/requirements.txt; torch comes from the PyTorch extension)."""
        from latentdrift.core.dependencies import read_requirements

        return read_requirements(Path(__file__).resolve().parent / "Resources" / "requirements.txt")

    def dependenciesReady(self) -> bool:
        """True when torch and every requirement are installed (nothing is imported or installed)."""
        from latentdrift.core.dependencies import installed_version, missing_requirements

        return installed_version("torch") is not None and not missing_requirements(self.requirements())

    def ensureDependencies(self) -> bool:
        """Install what is missing after ONE confirmation; False when the user declines or it fails.

        torch comes from the PyTorch extension (it picks the CUDA build for this GPU) and must be at
        least the engine's minimum; the rest through ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.11) or
        ``slicer.util.pip_install``, constrained so that neither torch nor Slicer's own packages change.
        Main thread only.
        """
        from latentdrift.core.dependencies import (
            TORCH_REQUIREMENT,
            installed_version,
            missing_requirements,
            torch_problem,
        )

        problem = torch_problem()
        if problem:
            slicer.util.errorDisplay(problem)
            return False
        torchMissing = installed_version("torch") is None
        missing = missing_requirements(self.requirements())
        if not torchMissing and not missing:
            return True
        if torchMissing and importlib.util.find_spec("PyTorchUtils") is None:
            slicer.util.errorDisplay(
                "LatentDrift needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                "restart Slicer, and try again."
            )
            return False
        items = (["PyTorch (through the PyTorch extension)"] if torchMissing else []) + missing
        if not slicer.util.confirmOkCancelDisplay(
            "LatentDrift needs these Python packages, which will be downloaded and installed now "
            "(this may take several minutes):\n\n" + "\n".join(items),
            "Install LatentDrift dependencies",
        ):
            return False
        if torchMissing:
            import PyTorchUtils

            requirement = TORCH_REQUIREMENT.removeprefix("torch")
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=requirement
            )
            if torch is None:
                slicer.util.errorDisplay(
                    "PyTorch could not be installed: see the Python console for details."
                )
                return False
        if missing:
            self._pipInstall(missing)
        return self.dependenciesReady()

    @staticmethod
    def _pipInstall(requirements: list[str]) -> None:
        """pip-install ``requirements`` with the installed torch and Slicer's own packages pinned."""
        from latentdrift.core.dependencies import (
            constraints_text,
            pip_ensure_arguments,
            pip_install_arguments,
        )

        with tempfile.TemporaryDirectory(prefix="latentdrift-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text(constraints_text(), encoding="utf-8")
            packaging = getattr(slicer, "packaging", None)
            if packaging is not None and hasattr(packaging, "pip_ensure"):
                packaging.pip_ensure(**pip_ensure_arguments(requirements, constraints))
            else:
                slicer.util.pip_install(pip_install_arguments(requirements, constraints))

    # ----------------------------------------------------------------- choices

    @staticmethod
    def startInfo() -> Any:
        """A ``latentdrift info`` process listing versions and devices (torch loads there, not here)."""
        from latentdrift.bridge.panel_support import start_info

        return start_info()

    @staticmethod
    def defaultModel(task: str) -> str:
        """The folder of ``task``'s default model ('' when it is not installed; no heavy imports)."""
        from latentdrift.bridge.panel_support import default_model_folder

        return str(default_model_folder(task) or "")

    @staticmethod
    def modelChoices(mode: str, scheme: str, folders: list[str]) -> list[tuple[str, str]]:
        """``(label, folder)`` that fit a tab (and the fine-tuning scheme): registry models and the user's folders."""
        from latentdrift.bridge.panel_support import panel_model_choices

        return panel_model_choices(mode, scheme, folders)

    # ----------------------------------------------------------------- runs

    @staticmethod
    def sliceRange(p: Any) -> str | None:
        """The ``slices`` setting of the panel (None for all slices)."""
        return None if p.allSlices else f"{p.sliceStart}:{p.sliceStop}"

    @staticmethod
    def previewSlices(p: Any) -> str:
        """The one slice the chosen axis's slice view shows, as a ``slices`` range."""
        from latentdrift.bridge import panel_support

        view = panel_support.slice_node_showing(p.axis)
        index = panel_support.shown_slice_index(p.inputVolume, view, p.axis)
        return f"{index}:{index + 1}"

    def counterfactualSettings(self, p: Any, model: str, device: str, preview: bool) -> Any:
        """The engine's CounterfactualSettings of the panel (the slice shown only, for a preview); δ and
        guidance as recorded with the model unless the panel's "The model's δ and guidance" is unticked."""
        from latentdrift.bridge import console
        from latentdrift.core.settings import FrontEndSettings
        from latentdrift.counterfactual.recorded_sampling import counterfactual_options

        source = console.attributes_text(p.fromAge, p.fromSex, p.fromDiagnosis)
        target = console.attributes_text(p.toAge, p.toSex, p.toDiagnosis)
        attributes = bool(source or target) and not p.instruction
        sampling = {} if p.modelSampling else {"drift": p.drift, "guidance": p.guidance}
        return counterfactual_options(
            mode=p.editMode,
            instruction=p.instruction or None,
            prompt=p.prompt or None,
            source=source if attributes else None,
            target=target if attributes else None,
            model=model or None,
            strength=p.strength,
            steps=p.editSteps,
            image_guidance=p.imageGuidance,
            factual_reference=p.factualReference,
            axis=p.axis,
            slices=self.previewSlices(p) if preview else self.sliceRange(p),
            device=device,
            seed=p.seed,
            front_end=FrontEndSettings(enabled=p.preprocess),
            **sampling,
        )

    def startCounterfactual(self, p: Any, model: str, device: str, preview: bool) -> Any:
        """Start a counterfactual of the slice range, or of the slice shown (``preview``)."""
        from latentdrift.bridge import console

        settings = self.counterfactualSettings(p, model, device, preview)
        run = console.prepare(p.inputVolume, settings, fade=p.fade)
        return console.start_run(run, console.as_counterfactual_result)

    def startSegment(self, p: Any, model: str, device: str) -> Any:
        """Start LDSeg on the slice range."""
        from latentdrift.bridge import console
        from latentdrift.core.settings import FrontEndSettings, SegmentSettings

        if not model:
            raise ValueError("Choose a segmentation model (or add a model folder).")
        settings = SegmentSettings(
            model=model,
            samples=p.samples,
            steps=p.segmentSteps or None,
            axis=p.axis,
            slices=self.sliceRange(p),
            probabilities=p.probabilities,
            device=device,
            seed=p.seed,
            front_end=FrontEndSettings(enabled=p.preprocess),
        )
        return console.start_run(console.prepare(p.inputVolume, settings), console.as_segment_result)

    @staticmethod
    def startFinetune(p: Any, model: str, device: str) -> Any:
        """Start fine-tuning ``model`` (for the ldseg scheme, '' trains a new model) into the job folder."""
        from latentdrift.bridge.console import start_finetune

        return start_finetune(
            p.cohort,
            p.scheme,
            p.jobDir,
            steps=p.finetuneSteps,
            drift=p.finetuneDrift if p.useDrift and not p.searchDrift else None,
            search_drift=p.useDrift and p.searchDrift,
            model=model or None,
            device=device,
            seed=p.seed,
        )

    @staticmethod
    def resumeFinetune(jobDir: str) -> Any:
        """Resume the job in ``jobDir``."""
        from latentdrift.bridge.console import TrainingJob

        return TrainingJob(jobDir).resume()

    @staticmethod
    def showLossChart() -> Any:
        """A new, empty loss chart, shown ONCE in the layout's plot view (its rows are added as the job goes)."""
        from latentdrift.bridge.panel_support import loss_chart

        chart = loss_chart()
        slicer.modules.plots.logic().ShowChartInLayout(chart.chart_node)
        return chart

    @staticmethod
    def selectResult(p: Any, result: Any) -> None:
        """Point the panel's output selectors at the new nodes."""
        if p is None:
            return
        if hasattr(result, "counterfactual_node"):
            p.counterfactualVolume = result.counterfactual_node
        if hasattr(result, "segmentation_node"):
            p.outputSegmentation = result.segmentation_node
            p.outputUncertainty = result.uncertainty_node

    @staticmethod
    def explain(error: Exception) -> str:
        """The error message, with advice for out-of-memory errors."""
        message = str(error)
        if type(error).__name__ == "OutOfMemoryError" and "CPU" not in message:
            message += "\n\nTry fewer slices per batch (a smaller slice range), or choose the CPU device."
        return message


# --------------------------------------------------------------------------- self-test


class LatentDriftSlicerTest(ScriptedLoadableModuleTest):
    """Self-test on the CPU in seconds: tiny models on a synthetic volume, through the engine process and back.

    Skipped, with the reason, where it cannot run: an older Slicer, or missing dependencies that the
    test may not install (a testing run, or a user who declines).
    """

    def setUp(self) -> None:
        """Dependencies there (or skip, saying why) and a clean scene.

        Also where unittest starts each ``test_*`` method (``slicer.testing.runUnitTest``, the CTest of
        the extension build machines), so those skip too.
        """
        self.skipUnlessReady()
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """Run every test (Slicer's Reload and Test calls this)."""
        self.setUp()
        self.test_scene_round_trip()
        self.setUp()
        self.test_shown_slice_index()
        self.setUp()
        self.test_tiny_models()

    def skipUnlessReady(self) -> None:
        """Install the dependencies (after one confirmation) or skip, saying why."""
        import unittest

        if not SUPPORTED:
            raise unittest.SkipTest(unsupportedMessage())
        logic = LatentDriftSlicerLogic()
        if logic.dependenciesReady():
            return
        if slicer.app.testingEnabled() or not logic.ensureDependencies():
            raise unittest.SkipTest(
                "LatentDrift self-test skipped: its Python dependencies (PyTorch through the PyTorch "
                "extension, and Resources/requirements.txt) are not installed. Open the module and run "
                "any action once to install them."
            )

    def _syntheticVolume(self) -> Any:
        import numpy as np

        k, j, i = np.meshgrid(np.arange(12), np.arange(14), np.arange(16), indexing="ij")
        voxels = (100 * np.exp(-((k - 6) ** 2 + (j - 7) ** 2 + (i - 8) ** 2) / 20.0)).astype(np.float32)
        node = slicer.util.addVolumeFromArray(voxels, name="LatentDrift self-test")
        node.SetSpacing(0.8, 1.1, 2.0)
        node.SetOrigin(10.0, -5.0, 3.0)
        return node

    def test_scene_round_trip(self) -> None:
        """The engine process reassembles the volume into a NEW node on the same grid, input untouched."""
        import numpy as np

        from latentdrift.bridge import console

        self.delayDisplay("Scene round trip through the engine process")
        node = self._syntheticVolume()
        before = slicer.util.arrayFromVolume(node).copy()
        result = console.run_on_node(node, "scene", ["--axis", "coronal", "--device", "cpu"], ["volume"])
        rebuilt = result.node("volume")
        self.assertIsNotNone(rebuilt)
        self.assertNotEqual(rebuilt.GetID(), node.GetID())
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(rebuilt), before)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        self.delayDisplay("Test passed")

    def test_shown_slice_index(self) -> None:
        """The preview's slice is the one the axial view shows (its slice offset), as the engine counts it."""
        from latentdrift.bridge import panel_support

        node = self._syntheticVolume()
        view = panel_support.slice_node_showing("axial")
        view.SetSliceOffset(3.0 + 2.0 * 5)  # origin k 3.0 mm, 2 mm apart: axial slice 5
        self.assertEqual(panel_support.shown_slice_index(node, view, "axial"), 5)
        self.delayDisplay("Test passed")

    def test_tiny_models(self) -> None:
        """Tiny random models (built by the engine process) segment and edit the volume into new nodes."""
        from latentdrift.bridge import console
        from latentdrift.bridge.processes import EngineProcess, engine_python

        self.delayDisplay("Tiny models on a synthetic volume")
        folder = Path(tempfile.mkdtemp(prefix="latentdrift-selftest-"))
        code = "from latentdrift.fixtures.tiny_models import build_self_test_models; build_self_test_models(sys.argv[1])"
        building = EngineProcess(engine_python(code, [str(folder)]))
        self.assertTrue(building.join(timeout=300), "building the tiny models took over 300 s")
        self.assertEqual(building.state.returncode, 0, "\n".join(building.state.log_tail))
        node = self._syntheticVolume()
        segmented = console.segment(node, model=str(folder / "ldseg"), samples=2, steps=2, device="cpu")
        segments = segmented.segmentation_node.GetSegmentation()
        self.assertEqual(segments.GetNthSegment(0).GetName(), "object")
        edited = console.counterfactual(
            node, instruction="make it older", model=str(folder / INSTRUCT.name), steps=2, device="cpu"
        )
        self.assertEqual(
            slicer.util.arrayFromVolume(edited.counterfactual_node).shape,
            slicer.util.arrayFromVolume(node).shape,
        )
        self.delayDisplay("Test passed")
