"""LatentDriftSlicer: Latent Drift counterfactuals, LDSeg segmentation and fine-tuning in 3D Slicer.

The module is a thin GUI over the engine in ``Logic/`` (imported as ``latentdrift``): every action
runs a ``latentdrift`` command in a child process (``latentdrift.processes``) and loads its results as
new nodes (``latentdrift.console``), so the GUI never freezes and Cancel ends the whole process tree.

Engine registration: when this file is imported (Slicer does it at start-up), :func:`registerEngine`
loads ``Logic/__init__.py`` as the package ``latentdrift`` with ``importlib`` (its submodules are found
in ``Logic/`` through the spec's ``submodule_search_locations``). ``Logic`` itself is never put on
``sys.path``, so its modules (``errors``, ``models``, …) cannot shadow other packages. A pip install
maps the same folder to the same name (``pyproject.toml``). Nothing heavy is imported here: torch
and the engine's other dependencies are installed on first use, after one confirmation.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
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
TORCH_REQUIREMENT = ">=2.4"
POLL_INTERVAL_MS = 200


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


registerEngine()

from latentdrift.train import SCHEMES  # noqa: E402  (the engine's list; light, no torch)

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
            "map, and fine-tuning on your own cohort. Models run in a separate process: the GUI stays "
            "responsive and Cancel stops the work. The same functions are available in the Python "
            "console (<code>import latentdrift.console</code>) and as the <code>latentdrift</code> "
            "command. See <a href='https://github.com/LatentDriftSlicer/LatentDriftSlicer/blob/main/"
            "docs/slicer-module.md'>the module documentation</a>."
        )
        self.parent.acknowledgementText = (
            'Methods: Yeganeh et al., "Latent Drifting in Diffusion Models for Counterfactual Medical '
            'Image Synthesis", CVPR 2025; Zaman et al., "Latent Diffusion for Medical Image '
            'Segmentation: End to end learning for fast sampling and accuracy". Built on 3D Slicer, '
            "PyTorch, diffusers and MONAI."
        )


# --------------------------------------------------------------------------- parameters


EDIT_MODES = ("instruct", "img2img", "direction")
AXES = ("axial", "coronal", "sagittal")
SEXES = ("unknown", "female", "male")


@parameterNodeWrapper
class LatentDriftSlicerParameterNode:
    """The panel's state, saved with the scene. Every field is bound to one widget (SlicerParameterName)."""

    inputVolume: vtkMRMLScalarVolumeNode
    axis: Annotated[str, Choice(AXES)] = "axial"
    allSlices: bool = True
    sliceStart: Annotated[int, WithinRange(0, 100000)] = 0
    sliceStop: Annotated[int, WithinRange(0, 100000)] = 1
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    # Counterfactual
    editMode: Annotated[str, Choice(EDIT_MODES)] = "instruct"
    instruction: str = ""
    prompt: str = ""
    fromAge: Annotated[float, WithinRange(-1.0, 120.0)] = -1.0
    toAge: Annotated[float, WithinRange(-1.0, 120.0)] = -1.0
    fromSex: Annotated[str, Choice(SEXES)] = "unknown"
    toSex: Annotated[str, Choice(SEXES)] = "unknown"
    fromDiagnosis: str = ""
    toDiagnosis: str = ""
    drift: Annotated[float, WithinRange(-0.2, 0.2)] = 0.0
    strength: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    editSteps: Annotated[int, WithinRange(1, 1000)] = 20
    guidance: Annotated[float, WithinRange(0.0, 30.0)] = 7.5
    imageGuidance: Annotated[float, WithinRange(0.0, 10.0)] = 1.5
    factualReference: bool = True
    fade: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    counterfactualVolume: vtkMRMLScalarVolumeNode
    # Segment
    samples: Annotated[int, WithinRange(1, 64)] = 8
    segmentSteps: Annotated[int, WithinRange(0, 1000)] = 0  # 0: the model's default
    probabilities: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    outputUncertainty: vtkMRMLScalarVolumeNode
    # Fine-tune
    cohort: str = ""
    scheme: Annotated[str, Choice(SCHEMES)] = "lora"
    useDrift: bool = True
    finetuneDrift: Annotated[float, WithinRange(-0.2, 0.2)] = 0.05
    searchDrift: bool = False
    finetuneSteps: Annotated[int, WithinRange(1, 1000000)] = 1000
    jobDir: str = ""


# --------------------------------------------------------------------------- widget


class LatentDriftSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Thin: settings come from the parameter node, work is done by the logic/engine."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: LatentDriftSlicerLogic | None = None
        self._parameterNode: LatentDriftSlicerParameterNode | None = None
        self._parameterNodeGuiTag: Any = None
        self._job: Any = None  # a latentdrift.console NodeJob or TrainingJob
        self._jobButton: Any = None
        self._jobButtonText = ""
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)

    # ----------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Build the panel from the .ui file and connect it."""
        ScriptedLoadableModuleWidget.setup(self)
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
        self.ui.cohortFileButton.connect("clicked(bool)", self.onPickCohortFile)
        self.ui.cohortFolderButton.connect("clicked(bool)", self.onPickCohortFolder)
        self.ui.jobDirButton.connect("clicked(bool)", self.onPickJobDir)
        self.ui.cohortLineEdit.connect("editingFinished()", self.updateCohortReport)
        self.ui.fadeSlider.connect("valueChanged(double)", self.onFadeChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.modeTabWidget.connect("currentChanged(int)", self.populateModels)
        self.ui.editModeComboBox.connect("currentIndexChanged(int)", self.populateModels)
        self.ui.schemeComboBox.connect("currentIndexChanged(int)", self.populateModels)
        self._timer.connect("timeout()", self.onTimer)

        self.populateDevices()
        self.populateModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
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

    def setParameterNode(self, parameterNode: LatentDriftSlicerParameterNode | None) -> None:
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

    # ----------------------------------------------------------------- devices and models

    def populateDevices(self) -> None:
        """Fill the device selector (auto, each GPU with its memory, MPS, CPU) when torch is there."""
        assert self.logic is not None
        saved = qt.QSettings().value(f"{SETTINGS_GROUP}/device", "auto")
        self.ui.deviceComboBox.blockSignals(True)
        self.ui.deviceComboBox.clear()
        for value, label in self.logic.deviceChoices():
            self.ui.deviceComboBox.addItem(label, value)
        index = self.ui.deviceComboBox.findData(saved)
        self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
        self.ui.deviceComboBox.blockSignals(False)
        self.onDeviceChanged()

    def onDeviceChanged(self, index: int = 0) -> None:
        """Remember the device; warn that the CPU is slow."""
        assert self.logic is not None
        device = self.currentDevice()
        qt.QSettings().setValue(f"{SETTINGS_GROUP}/device", device)
        self.ui.deviceWarningLabel.text = self.logic.deviceWarning(device)

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

    def onModelChanged(self, index: int) -> None:
        """Remember the model chosen for this task."""
        qt.QSettings().setValue(f"{SETTINGS_GROUP}/model/{self.currentTask()}", self.currentModel())

    def currentModel(self) -> str:
        """The chosen model folder ('' for none)."""
        return str(self.ui.modelComboBox.currentData or "")

    def currentMode(self) -> str:
        """``counterfactual``, ``segment`` or ``finetune``, from the selected tab."""
        return ("counterfactual", "segment", "finetune")[max(self.ui.modeTabWidget.currentIndex, 0)]

    def currentTask(self) -> str:
        """The engine task of the tab: its edit mode on the Counterfactual tab, else ``segment``/``finetune``."""
        mode = self.currentMode()
        return str(self.ui.editModeComboBox.currentText or "instruct") if mode == "counterfactual" else mode

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
        """Show a short check of the cohort (needs the engine's dependencies)."""
        assert self.logic is not None
        if self._parameterNode and self._parameterNode.cohort:
            self.ui.cohortReportLabel.text = self.logic.cohortReport(self._parameterNode.cohort)

    # ----------------------------------------------------------------- actions

    def onApplyButton(self) -> None:
        """Counterfactual of the slice range (or Cancel while it runs)."""
        self.runNodeAction(self.ui.applyButton, "Counterfactual failed.", preview=False)

    def onPreviewButton(self) -> None:
        """Counterfactual of the slice under the crosshair only."""
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
                job = self.logic.startSegment(p, model, device, self.onEvent)
            else:
                ras = self.logic.crosshairRAS() if preview else None
                job = self.logic.startCounterfactual(p, model, device, ras, self.onEvent)
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
        """A job runs: its button turns into Cancel, the timer polls it."""
        self._job, self._jobButton, self._jobButtonText = job, button, button.text
        button.text = "Cancel"
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = "Starting…"
        self.ui.logTextEdit.clear()
        self._timer.start()
        self.updateButtons()

    def cancelJob(self) -> None:
        """Stop the running job and its whole process tree."""
        with slicer.util.tryWithErrorDisplay("Cancel failed.", waitCursor=True):
            self._job.cancel()  # the timer sees the job end and restores the panel

    # ----------------------------------------------------------------- progress

    def onTimer(self) -> None:
        """Drain the running job's events (engine-process runs) and its training status."""
        if self._job is None:
            self._timer.stop()
            return
        for event in self._job.poll():
            self.onEvent(event)
        if hasattr(self._job, "status"):
            self.showTrainingStatus()
            if not self._job.running:
                self.onJobFinished()
        elif self._job.done:
            self.onJobFinished()

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

    def showTrainingStatus(self) -> None:
        """Progress, ETA, loss curve and latest sample image of the fine-tuning job."""
        assert self.logic is not None and self._parameterNode is not None
        status = self._job.status()
        latest = status.latest
        if latest.get("step") is not None:
            self.ui.finetuneProgressBar.value = int(
                100 * latest["step"] / max(1, self._parameterNode.finetuneSteps)
            )
        if latest.get("eta_s") is not None:
            self.ui.etaLabel.text = (
                f"step {latest.get('step')}, loss {latest.get('loss')}, about {latest['eta_s']:.0f} s left"
            )
        self.logic.showLossChart(status)
        image = status.sample_image(self._job.job_dir)
        if image is not None:
            self.ui.sampleImageLabel.setPixmap(qt.QPixmap(str(image)).scaledToWidth(256))

    def onJobFinished(self) -> None:
        """Restore the button; select the new nodes or show why the job failed."""
        job, self._job = self._job, None
        self._timer.stop()
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
        assert self.logic is not None
        self.logic.setFade(value)


# --------------------------------------------------------------------------- logic


class LatentDriftSlicerLogic(ScriptedLoadableModuleLogic):
    """Thin layer between the panel and ``latentdrift.console``; usable from scripts without the panel."""

    def getParameterNode(self) -> LatentDriftSlicerParameterNode:
        """The module's parameter node (typed)."""
        return LatentDriftSlicerParameterNode(super().getParameterNode())

    # ----------------------------------------------------------------- dependencies

    @staticmethod
    def requirements() -> list[str]:
        """The engine's pip requirements (Resources/requirements.txt; torch comes from PyTorchUtils)."""
        path = Path(__file__).resolve().parent / "Resources" / "requirements.txt"
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        return [line for line in lines if line]

    def missingRequirements(self) -> list[str]:
        """Requirements not satisfied in Slicer's Python."""
        from importlib import metadata

        from packaging.requirements import Requirement

        missing = []
        for text in self.requirements():
            requirement = Requirement(text)
            try:
                installed = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                missing.append(text)
                continue
            if not requirement.specifier.contains(installed, prereleases=True):
                missing.append(text)
        return missing

    def dependenciesReady(self) -> bool:
        """True when torch and every requirement are installed (nothing is imported or installed)."""
        return importlib.util.find_spec("torch") is not None and not self.missingRequirements()

    def ensureDependencies(self) -> bool:
        """Install what is missing after ONE confirmation; False when the user declines or it fails.

        torch comes from the PyTorch extension (it picks the CUDA build for this GPU); the rest through
        ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.11) or ``slicer.util.pip_install``. Main thread only.
        """
        torchMissing = importlib.util.find_spec("torch") is None
        missing = self.missingRequirements()
        if not torchMissing and not missing:
            return True
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
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
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT
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
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            from packaging.requirements import Requirement

            packaging.pip_ensure(
                [Requirement(text) for text in requirements],
                skip_packages=["torch", "torchvision"],
                prompt_install=False,
                requester="LatentDrift",
            )
        else:
            slicer.util.pip_install(requirements)

    # ----------------------------------------------------------------- choices

    @staticmethod
    def deviceChoices() -> list[tuple[str, str]]:
        """Device selector entries; only ``auto`` until torch is installed."""
        if importlib.util.find_spec("torch") is None:
            return [("auto", "auto (install dependencies to list GPUs)")]
        from latentdrift.console import device_choices

        return device_choices()

    @staticmethod
    def deviceWarning(device: str) -> str:
        """The CPU-speed warning when the chosen device is (or resolves to) the CPU."""
        if device == "cpu":
            from latentdrift.console import CPU_WARNING

            return CPU_WARNING
        return ""

    @staticmethod
    def defaultModel(task: str) -> str:
        """The folder of ``task``'s default model ('' when it is not installed; no heavy imports)."""
        from latentdrift.console import default_model_folder

        return str(default_model_folder(task) or "")

    @staticmethod
    def modelChoices(mode: str, scheme: str, folders: list[str]) -> list[tuple[str, str]]:
        """``(label, folder)`` that fit a tab (and the fine-tuning scheme): registry models and the user's folders."""
        from latentdrift.console import panel_model_choices

        return panel_model_choices(mode, scheme, folders)

    def cohortReport(self, cohort: str) -> str:
        """A short check of the cohort for the panel."""
        if not self.dependenciesReady():
            return "The cohort is checked once the dependencies are installed."
        from latentdrift.console import describe_cohort

        return describe_cohort(cohort)

    # ----------------------------------------------------------------- runs

    @staticmethod
    def sliceRange(p: LatentDriftSlicerParameterNode) -> str | None:
        """The ``--slices`` text of the panel (None for all slices)."""
        return None if p.allSlices else f"{p.sliceStart}:{p.sliceStop}"

    @staticmethod
    def crosshairRAS() -> tuple[float, float, float]:
        """Where the crosshair is (RAS, mm)."""
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        ras = crosshair.GetCrosshairRAS()
        return (float(ras[0]), float(ras[1]), float(ras[2]))

    def startCounterfactual(
        self,
        p: LatentDriftSlicerParameterNode,
        model: str,
        device: str,
        previewRAS: tuple[float, float, float] | None,
        onEvent: Any,
    ) -> Any:
        """Start a counterfactual of the slice range, or of the slice at ``previewRAS``."""
        from latentdrift import console

        slices = self.sliceRange(p)
        if previewRAS is not None:
            index = console.slice_index_at_ras(p.inputVolume, previewRAS, p.axis)
            slices = f"{index}:{index + 1}"
        source = console.attributes_text(p.fromAge, p.fromSex, p.fromDiagnosis)
        target = console.attributes_text(p.toAge, p.toSex, p.toDiagnosis)
        run = console.prepare_counterfactual(
            p.inputVolume,
            edit=p.editMode,
            instruction=p.instruction or None,
            prompt=p.prompt or None,
            source=source if (source or target) and not p.instruction else None,
            target=target if (source or target) and not p.instruction else None,
            model=model or None,
            drift=p.drift,
            strength=p.strength,
            steps=p.editSteps,
            guidance=p.guidance,
            image_guidance=p.imageGuidance if p.editMode == "instruct" else None,
            factual_reference=p.factualReference,
            axis=p.axis,
            slices=slices,
            device=device,
            seed=p.seed,
            fade=p.fade,
        )
        return self.start(run, console.as_counterfactual_result, onEvent)

    def startSegment(self, p: LatentDriftSlicerParameterNode, model: str, device: str, onEvent: Any) -> Any:
        """Start LDSeg on the slice range."""
        from latentdrift import console

        if not model:
            raise ValueError("Choose a segmentation model (or add a model folder).")
        run = console.prepare_segment(
            p.inputVolume,
            model=model,
            samples=p.samples,
            steps=p.segmentSteps or None,
            axis=p.axis,
            slices=self.sliceRange(p),
            probabilities=p.probabilities,
            device=device,
            seed=p.seed,
        )
        return self.start(run, console.as_segment_result, onEvent)

    @staticmethod
    def start(run: Any, convert: Any, onEvent: Any) -> Any:
        """Run ``run`` in the background; returns its ``NodeJob`` (the widget's timer sees it end).

        Slicer ≥ 5.12 runs the process with its own non-blocking ``launchConsoleProcess`` (lines go to
        ``onEvent`` as they arrive); older versions use the engine's runner, which the timer polls.
        """
        from latentdrift.console import NodeJob
        from latentdrift.processes import EngineProcess, child_environment

        launcher = getattr(slicer.util, "launchConsoleProcess", None)
        if launcher is None or "blocking" not in inspect.signature(launcher).parameters:
            return NodeJob(run, convert, EngineProcess(run.argv))
        job = NodeJob(run, convert)

        def onLine(line: str) -> None:
            onEvent(job.feed_line(line))

        def onCompleted(returncode: int) -> None:
            job.feed_exit(returncode)

        environment = {"PYTHONUNBUFFERED": child_environment()["PYTHONUNBUFFERED"]}
        process = launcher(
            run.argv,
            useStartupEnvironment=False,
            updateEnvironment=environment,
            blocking=False,
            logCallback=onLine,
            completedCallback=onCompleted,
        )
        job.pid = process.pid
        return job

    @staticmethod
    def startFinetune(p: LatentDriftSlicerParameterNode, model: str, device: str) -> Any:
        """Start fine-tuning ``model`` (for the ldseg scheme, '' trains a new model) into the job folder."""
        from latentdrift.console import start_finetune

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
        from latentdrift.console import TrainingJob

        return TrainingJob(jobDir).resume()

    @staticmethod
    def showLossChart(status: Any) -> None:
        """Update the loss chart node and show it in the layout's plot view."""
        from latentdrift.console import loss_chart

        if status.losses:
            chart = loss_chart(status)
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    @staticmethod
    def selectResult(p: LatentDriftSlicerParameterNode | None, result: Any) -> None:
        """Point the panel's output selectors at the new nodes."""
        if p is None:
            return
        if hasattr(result, "counterfactual_node"):
            p.counterfactualVolume = result.counterfactual_node
        if hasattr(result, "segmentation_node"):
            p.outputSegmentation = result.segmentation_node
            p.outputUncertainty = result.uncertainty_node

    @staticmethod
    def setFade(value: float) -> None:
        """Foreground opacity in every slice view."""
        from latentdrift.console import set_fade

        set_fade(value)

    @staticmethod
    def explain(error: Exception) -> str:
        """The error message, with advice for out-of-memory errors."""
        message = str(error)
        if type(error).__name__ == "OutOfMemoryError" and "CPU" not in message:
            message += "\n\nTry fewer slices per batch (a smaller slice range), or choose the CPU device."
        return message


# --------------------------------------------------------------------------- self-test


class LatentDriftSlicerTest(ScriptedLoadableModuleTest):
    """Self-test on the CPU in seconds: a synthetic volume through the engine process and back."""

    def setUp(self) -> None:
        """A clean scene."""
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """Run every test."""
        self.setUp()
        self.test_scene_round_trip()
        self.setUp()
        self.test_crosshair_slice_index()

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

        from latentdrift import console

        self.delayDisplay("Scene round trip through the engine process")
        node = self._syntheticVolume()
        before = slicer.util.arrayFromVolume(node).copy()
        result = console.run_on_node(node, "scene", ["--axis", "coronal"], ["volume"], device="cpu")
        rebuilt = result.node("volume")
        self.assertIsNotNone(rebuilt)
        self.assertNotEqual(rebuilt.GetID(), node.GetID())
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(rebuilt), before)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)
        self.delayDisplay("Test passed")

    def test_crosshair_slice_index(self) -> None:
        """The slice under a point is the one the engine cuts."""
        from latentdrift import console

        node = self._syntheticVolume()
        ras = [0.0, 0.0, 0.0, 1.0]
        node.GetIJKToRASMatrix(matrix := vtk.vtkMatrix4x4())
        matrix.MultiplyPoint([3, 4, 5, 1], ras)
        self.assertEqual(console.slice_index_at_ras(node, ras[:3], "axial"), 5)
        self.delayDisplay("Test passed")
