"""The command line's options: each one's type, flag and help, named once and shared by the commands that take
it (:mod:`ecovae.cli`), so that a command's signature reads as the list of what it takes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _opt(help: str, *names: str):
    return typer.Option(*names, help=help)


def _arg(help: str):
    return typer.Argument(help=help)


BASELINE_DEFAULT = "indices,logmel,birdnet"  # BirdNET only where its extra is installed
MODEL_HELP = "Run folder made by 'ecovae train', or 'pretrained': the model that ships with ecovae."

# --------------------------------------------------------------------------- shared

Recordings = Annotated[Path, _arg("Folder of recordings (searched recursively).")]
Latents = Annotated[Path, _arg("Parquet file made by 'ecovae encode'.")]
Labels = Annotated[Path | None, _opt("CSV with a 'path' column and label columns.")]
AudioFolder = Annotated[Path | None, _opt("Audio folder (default: the run's).")]
ModelDir = Annotated[Path, _opt(MODEL_HELP, "--model")]
Unit = Annotated[
    str | None,
    _opt(
        "Unit of analysis: label columns whose values make one unit, e.g. 'site,recorder' (default: each recording); "
        "'frame': each frame (for labels of frames)."
    ),
]
FrameLabels = Annotated[
    Path | None,
    _opt(
        "Labels CSV joined to the latents: by recording ('path' + label columns) or by frame ('path', "
        "'frame_in_recording' + label columns, as 'ecovae explore' saves them)."
    ),
]
Window = Annotated[str | None, _opt("Also cut units by time: a pandas frequency, e.g. 1D (one unit per day), 6h.")]
Seed = Annotated[int, _opt("Seed for the folds, samples and projections.")]
Quiet = Annotated[bool, _opt("No progress bars.", "--quiet")]
Verbose = Annotated[bool, _opt("Debug messages too.", "--verbose")]
Hours = Annotated[str, _opt("Recording start hours, comma-separated.")]

# --------------------------------------------------------------------------- training

Preset = Annotated[
    str | None,
    _opt(
        "Model size: 'full' (the paper's table, for a GPU), 'small' or 'tiny' (a CPU); default: the largest "
        "that fits the budget here, measured before training starts."
    ),
]
Budget = Annotated[float, _opt("Minutes of training to plan for: sets the preset and the steps unless they are given.")]
Init = Annotated[
    str | None,
    _opt(
        "Start from a model's weights instead of random ones (fine-tuning): 'pretrained' (the model that ships "
        "with ecovae) or a run folder. Its preset and recipe are kept; the steps fit the budget.",
        "--init",
    ),
]
RunOut = Annotated[Path, _opt("Run folder to create (or resume).", "--out")]
MaxSteps = Annotated[int | None, _opt("Optimisation steps in total.")]
BatchSize = Annotated[int | None, _opt("Training windows per step.")]
WindowFrames = Annotated[int | None, _opt("Frames (1.536 s each) per training window.")]
LearningRate = Annotated[float | None, _opt("Peak learning rate (AdamW, cosine decay).")]
TrainSeed = Annotated[int | None, _opt("Seed for the split, initialisation and sampling.")]
CheckpointEvery = Annotated[int | None, _opt("Steps between checkpoints.")]
CheckpointMinutes = Annotated[float | None, _opt("Minutes between checkpoints (as well), default 10.")]
ValEvery = Annotated[int | None, _opt("Steps between validations.")]
NumWorkers = Annotated[int | None, _opt("DataLoader worker processes.")]
Accelerator = Annotated[str | None, _opt("Lightning accelerator: auto, cpu, gpu, ...")]
Devices = Annotated[str | None, _opt("Lightning devices: auto, 1, 2, ...")]
TrainPrecision = Annotated[
    str | None,
    _opt("Lightning precision: 32-true (default), bf16-mixed (faster on GPUs and bf16 CPUs; learns differently)."),
]
Strategy = Annotated[str | None, _opt("Lightning strategy: auto, or ddp for several devices or nodes.")]
NumNodes = Annotated[int | None, _opt("Nodes of a distributed run (SLURM, torchrun).")]
Resume = Annotated[bool, _opt("Continue the run in --out from its last checkpoint.", "--resume")]
Cache = Annotated[
    Path | None,
    _opt(
        "Log-mel cache folder, reused by later runs on the same recordings (default $ECOVAE_CACHE, else ~/.cache/ecovae)."
    ),
]

# --------------------------------------------------------------------------- encoding

EncodeOut = Annotated[
    Path, _opt("A .parquet file, or a folder for a Parquet dataset (resumes if interrupted).", "--out")
]
ClipBatch = Annotated[int | None, _opt("Clips per forward pass (default: 1 on CPU, 8 on GPU).")]
Device = Annotated[str, _opt("torch device: cpu, cuda, cuda:1, ...")]
CorrectHardware = Annotated[
    str | None, _opt("Label column of the recorder: remove each recorder's log-mel offset first.")
]
Engine = Annotated[str, _opt("local, or ray: a Ray cluster (pip install 'ecovae\\[distributed]').")]
Address = Annotated[
    str | None, _opt("Ray cluster address; 'auto': the one this node is in (default: a new local one).")
]
Workers = Annotated[int | None, _opt("Decoding processes beside the model (default: from the cores).")]
Threads = Annotated[int | None, _opt("Torch threads for the model (default: torch's, the physical cores).")]
Precision = Annotated[
    str,
    _opt(
        "The encoder's precision: auto (the fastest that passes its fidelity check here; an existing output's "
        "own), fp32, bf16 (CPUs with AVX512_BF16 or AMX; GPUs), int8 (CPU, pip install 'ecovae\\[fast]')."
    ),
]
QuietBar = Annotated[bool, _opt("No progress bar.", "--quiet")]

# --------------------------------------------------------------------------- analysis

DescribeOut = Annotated[Path, _opt("Parquet file of descriptors.", "--out")]
Kind = Annotated[str, _opt("mean (of mu), moments (mixture mean and variance) or mixture (samples).")]
FeatureSet = Annotated[str, _opt("vae (the posteriors) or logmel (the frames' mean log-mel per band).")]
Samples = Annotated[int, _opt("Samples per unit for --kind mixture.")]
Target = Annotated[str, _opt("Label column to classify (site, habitat, day_night, ...).")]
EvalOut = Annotated[Path, _opt("Folder for metrics, confusion matrices and predictions.", "--out")]
Group = Annotated[
    str | None,
    _opt("Label column whose values never straddle a split, e.g. site for new sites (default: the unit)."),
]
Folds = Annotated[int, _opt("Cross-validation folds (fewer if a class has fewer groups).")]
Recorder = Annotated[str | None, _opt("Recorder label column: also run the hardware check (needs --model).")]
CheckModel = Annotated[Path | None, _opt("Run folder, or 'pretrained' (for the hardware check).", "--model")]
CheckLabels = Annotated[
    Path | None,
    _opt(
        "Labels CSV joined to the latents, by recording ('path' + label columns; also the hardware check's) or by "
        "frame ('path', 'frame_in_recording' + label columns, as 'ecovae explore' saves them)."
    ),
]
Baselines = Annotated[
    str,
    _opt(
        "Baseline feature sets scored beside; indices and birdnet need the audio (--model or --recordings); '' for none."
    ),
]
BaselineCache = Annotated[
    Path | None, _opt("Folder caching the baselines' windows (default: LATENTS.baselines/ beside the latents).")
]
InterpretTarget = Annotated[str, _opt("Label column the classifier separates.")]
InterpretOut = Annotated[Path, _opt("Folder for the figures and interpretation.json.", "--out")]
SaliencyRecording = Annotated[str | None, _opt("Recording (relative path) for the saliency map.")]
Classes = Annotated[str | None, _opt("Two classes for the boundary walk, 'A,B' (default: the two commonest).")]
NoveltyFolder = Annotated[
    Path | None, _opt("Folder of 'ecovae novelty': its top frames are never offered as exemplars of a class.")
]
ReportRun = Annotated[Path, _arg("Run folder, or 'pretrained' (the model that ships with ecovae).")]
ReportEval = Annotated[Path, _arg("Evaluation folder (evaluate / interpret --out).")]
ReportOut = Annotated[Path, _opt("HTML file to write.", "--out")]
AudioBudget = Annotated[float, _opt("Sound embedded in the report (MB); past it, links to the files beside it.")]
NoveltyOut = Annotated[Path, _opt("Folder for novelty.parquet, the top list and excerpts.", "--out")]
NoveltyModel = Annotated[
    Path | None, _opt("Run folder, or 'pretrained' (for --elbo and the spectrogram settings).", "--model")
]
Top = Annotated[int, _opt("Frames in the top list.")]
NoveltyFeatures = Annotated[str, _opt("Feature sets to score, comma-separated; the first ranks (logmel, vae).")]
Elbo = Annotated[bool, _opt("Also each frame's negative ELBO (a decoder pass; needs --model).", "--elbo")]
DielOut = Annotated[Path, _opt("Folder for diel_<group>.png and diel.json.", "--out")]
By = Annotated[str, _opt("Label column: one image per value (site, say); 'none' for one image.")]
BinMinutes = Annotated[int, _opt("Minutes per column of the image.")]
Frames = Annotated[int, _opt("Frames in the input (39 = one clip).")]

# --------------------------------------------------------------------------- the whole pipeline

RunRecordings = Annotated[Path, _arg("Folder of recordings.")]
RunTarget = Annotated[str, _opt("Label column to classify.")]
RunOutFolder = Annotated[Path, _opt("Folder for everything.", "--out")]
RunLabels = Annotated[Path | None, _opt("Labels CSV ('path' + label columns).")]
RunGroup = Annotated[str | None, _opt("Label column for grouped folds (default: the unit).")]
RunRecorder = Annotated[str | None, _opt("Recorder label column for the hardware check.")]
RunSteps = Annotated[int | None, _opt("Training steps.")]
AsIsModel = Annotated[Path | None, _opt("Use this model as it is, with no training: " + MODEL_HELP, "--model")]
RunDevice = Annotated[str, _opt("Where to train and encode: auto (a GPU if there is one), cpu, cuda.")]
RunBaselines = Annotated[str, _opt("Baseline feature sets beside the VAE (indices, logmel, birdnet); '' for none.")]
RunElbo = Annotated[bool, _opt("Also rank unusual frames by negative ELBO (a decoder pass over the survey).", "--elbo")]

# --------------------------------------------------------------------------- simulated surveys

SimulateOut = Annotated[Path, _arg("Folder to write the survey into.")]
Sites = Annotated[int, _opt("Sites along the degradation gradient.")]
RecordersPerSite = Annotated[int, _opt("Recorders per site (models alternate).")]
Days = Annotated[int, _opt("Days recorded.")]
Habitats = Annotated[
    int,
    _opt("Habitat levels along the degradation gradient (0: one per site); sites of a habitat differ in their day."),
]
Duration = Annotated[float, _opt("Seconds per recording.")]
SurveySeed = Annotated[int, _opt("Random seed: the survey depends on it alone.")]
RareEvents = Annotated[
    int, _opt("Recordings given a rare sound (a siren or a chainsaw), listed in events.csv; the rest unchanged.")
]
EventDb = Annotated[float, _opt("The rare sounds' level over the ambient where they are, dB.")]
QuickOut = Annotated[Path, _opt("Folder for the survey, the run and the latents.", "--out")]
QuickSteps = Annotated[
    int | None,
    _opt("Training steps: of the fine-tune (default 300), or with --from-scratch of the tiny model (default 1000)."),
]
FromScratch = Annotated[
    bool, _opt("Train a tiny model from random weights instead of fine-tuning the shipped one.", "--from-scratch")
]
QuickDuration = Annotated[float, _opt("Seconds per simulated recording.")]
QuickSites = Annotated[int, _opt("Simulated sites.")]
QuickHabitats = Annotated[int, _opt("Habitats the sites share (sites of one habitat differ in their day).")]
QuickDays = Annotated[int, _opt("Days recorded: one unit of analysis per site, recorder and day.")]
QuickSeed = Annotated[int, _opt("Seed for the survey and the training.")]
QuickEvents = Annotated[int, _opt("Recordings given a rare sound (siren, chainsaw) for the novelty ranking to find.")]

# --------------------------------------------------------------------------- explore
ExploreModel = Annotated[
    Path | None, _opt("Run folder or 'pretrained': reconstructions, decoded means, and its recordings.", "--model")
]
ExploreNovelty = Annotated[Path | None, _opt("Folder of 'ecovae novelty': colour the map by its scores.")]
Port = Annotated[int, _opt("Port to serve the page on.")]
NoOpen = Annotated[bool, _opt("Serve only: do not open a browser (on a server, or in a test).", "--no-open")]
Host = Annotated[str | None, _opt("Address to listen on beyond this machine, e.g. 0.0.0.0 (default: loopback only).")]
ExploreLabels = Annotated[
    Path | None, _opt("Labels CSV the page appends named selections to (default: frame_labels.csv beside LATENTS).")
]
Column = Annotated[str | None, _opt("Label column the names are saved under (default: the file's, or 'sound').")]
MapMethod = Annotated[str, _opt("Projection of the map: umap, or pca (fast).")]
