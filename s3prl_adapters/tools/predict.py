"""`s3prl-adapters export / predict / verify`: trained adapters on the user's own audio.

predict reads wav/flac/ogg files, folders (recursively) or text lists of paths, any sample rate and
channel count; it batches them by length and writes one JSON line per file with every set's
answer (ASV embeddings go to .npy files, their paths in the line). An unreadable file gets an
`error` field and the others go on; the exit code is 1 when anything failed."""

import json
import os
import sys
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np

from s3prl_adapters.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".scp")


def quiet_library_warnings() -> None:
    """Deprecation notices from torch/torchaudio about S3PRL's code and ours, not about the user's input."""
    for message in (".*weight_norm.*", "Support for mismatched key_padding_mask", ".*apply_effects_tensor.*"):
        warnings.filterwarnings("ignore", message=message)


def expand_inputs(inputs: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """Files as given, folders walked for audio files (sorted), text lists read (one path per line; a
    relative entry resolves against the list's own folder, not the working directory). Returns the
    files and, for those that came from a list as relative entries, where they came from (for the
    message when one is missing)."""
    files, origins = [], {}
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(item) for f in fs
                           if f.lower().endswith(AUDIO_EXTENSIONS))
            if not found:
                raise UserError(f"{item}: a folder without audio files ({', '.join(AUDIO_EXTENSIONS)})")
            files += found
        elif item.lower().endswith(LIST_EXTENSIONS) and os.path.isfile(item):
            base = os.path.dirname(os.path.abspath(item))
            with open(item) as f:
                for entry in (line.strip() for line in f):
                    if not entry:
                        continue
                    path = entry if os.path.isabs(entry) else os.path.join(base, entry)
                    if not os.path.isabs(entry):
                        origins[path] = item
                    files.append(path)
        else:
            files.append(item)  # a missing or unreadable file becomes an error line, not a stop
    return files, origins


def missing_file_error(path: str, origins: Dict[str, str]) -> str:
    note = f" (relative entries of {origins[path]} resolve against its folder)" if path in origins else ""
    return f"no such file: {path}{note}"


def _duration(path: str) -> float:
    import soundfile as sf

    try:
        return sf.info(path).duration
    except Exception:
        return 0.0  # read (and reported) as unreadable later


def predict_files(model, files: List[str], batch_size: int = 8, embeddings_dir: Optional[str] = None,
                  progress: bool = True, origins: Optional[Dict[str, str]] = None) -> List[dict]:
    """One result per file (input order): {'file', 'audio': what was read/converted, <set>: answer}
    or {'file', 'error'}."""
    from tqdm import tqdm

    from s3prl_adapters.inference.audio import read_audio

    order = sorted(range(len(files)), key=lambda i: _duration(files[i]))  # similar lengths batch together
    results: Dict[int, dict] = {}
    bar = tqdm(total=len(files), desc="predict", unit="file", file=sys.stderr, disable=not progress)
    for start in range(0, len(order), batch_size):
        batch, wavs = [], []
        for i in order[start:start + batch_size]:
            if not os.path.exists(files[i]):
                results[i] = {"file": files[i], "error": missing_file_error(files[i], origins or {})}
                continue
            try:
                wav, note = read_audio(files[i])
            except UserError as e:
                results[i] = {"file": files[i], "error": str(e)}
                continue
            results[i] = {"file": files[i], "audio": note}
            batch.append(i)
            wavs.append(wav)
        if wavs:
            for i, answers in zip(batch, model.predict(wavs)):
                for name, answer in answers.items():
                    results[i][name] = _jsonable(answer, files[i], i, name, embeddings_dir)
        bar.update(len(order[start:start + batch_size]))
    bar.close()
    return [results[i] for i in range(len(files))]


def _jsonable(answer: dict, path: str, index: int, set_name: str, embeddings_dir: Optional[str]) -> dict:
    if "embedding" not in answer:
        return answer
    folder = embeddings_dir or "embeddings"
    os.makedirs(folder, exist_ok=True)
    stem = os.path.basename(path).rsplit(".", 1)[0]
    out = os.path.join(folder, f"{index:06d}_{stem}.{set_name}.npy")
    np.save(out, answer["embedding"].numpy())
    return dict({k: v for k, v in answer.items() if k != "embedding"}, embedding=os.path.abspath(out))


def split_adapters(adapters: List[str], rest: List[str]):
    """`--adapters a.adapter b.adapter x.wav ...`: argparse puts everything after the flag into it; the
    adapter sets are the leading zip archives (torch.save's format; audio files, folders and lists are not)."""
    import zipfile

    if rest:
        return adapters, rest
    k = 0
    while k < len(adapters) and os.path.isfile(adapters[k]) and zipfile.is_zipfile(adapters[k]):
        k += 1
    return adapters[:max(k, 1)], adapters[max(k, 1):]


def predict_command(args) -> int:
    quiet_library_warnings()
    from s3prl_adapters.inference import AdapterSet, MultiTaskWavLM

    args.adapters, args.inputs = split_adapters(args.adapters, args.inputs)
    if not args.inputs:
        raise UserError("no inputs: give audio files, folders or lists after the adapter sets")
    sets = [AdapterSet.load(p) for p in args.adapters]
    model = MultiTaskWavLM(args.backbone, sets, device=args.device)
    shared = [s.name for s in sets if not s.runs_inside_the_backbone]
    own = [s.name for s in sets if s.runs_inside_the_backbone]
    print("[predict] backbone passes per batch: " + "; ".join(
        ([f"one shared by {', '.join(shared)} (per audio preparation)"] if shared else [])
        + ([f"one each for {', '.join(own)} (E-adapters, LoRA or trained LayerNorms inside the backbone)"] if own else [])),
        file=sys.stderr)
    files, origins = expand_inputs(args.inputs)
    embeddings = args.embeddings or os.path.join(os.path.dirname(os.path.abspath(args.output)) if args.output
                                                 else os.getcwd(), "embeddings")
    results = predict_files(model, files, batch_size=args.batch_size, embeddings_dir=embeddings, origins=origins)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    if args.output:
        tmp = f"{args.output}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(lines)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(lines)
    failed = [r for r in results if "error" in r or any(isinstance(v, dict) and "error" in v for v in r.values())]
    if failed:
        print(f"{len(failed)} of {len(results)} file(s) failed (see their 'error' fields)", file=sys.stderr)
    return 1 if failed else 0


def verify_command(args) -> int:
    quiet_library_warnings()
    import torch

    from s3prl_adapters.inference import AdapterSet, MultiTaskWavLM, read_audio

    args.adapters, files = split_adapters(args.adapters, args.files)
    if len(files) != 2:
        raise UserError(f"verify compares two recordings, got {len(files)}: {files}")
    sets = [AdapterSet.load(p) for p in args.adapters]
    pairs = [s for s in sets if s.task_spec.scores_pairs]
    if len(pairs) != 1:
        raise UserError(f"verify needs exactly one speaker-verification adapter set, got {len(pairs)} "
                        f"among {[s.name for s in sets]}")
    sv = pairs[0]
    model = MultiTaskWavLM(args.backbone, [sv], device=args.device)
    embeddings = []
    for path in files:
        if not os.path.exists(path):
            raise UserError(missing_file_error(path, {}))
        wav, _ = read_audio(path)
        answer = model.predict([wav])[0][sv.name]
        if "error" in answer:
            raise UserError(f"{path}: {answer['error']}")
        embeddings.append(answer["embedding"])
    score = float(torch.nn.functional.cosine_similarity(embeddings[0], embeddings[1], dim=-1))
    if sv.threshold is None:
        print(f"score {score:.6f} (cosine); no decision: {sv.name} stores no threshold (its run had no dev trial list)")
    else:
        same = score >= sv.threshold
        print(f"score {score:.6f} (cosine) {'>=' if same else '<'} threshold {sv.threshold:.6f} (dev EER): "
              f"{'same speaker' if same else 'different speakers'}")
    return 0


def export_command(args) -> int:
    quiet_library_warnings()
    from s3prl_adapters.inference import export

    adapter_set = export(args.checkpoint, backbone=args.backbone, threshold=not args.no_threshold, device=args.device)
    size = adapter_set.save(args.output)
    method = adapter_set.adapter_config["method"] if adapter_set.adapter_config else (
        "fine-tuning" if adapter_set.finetuned else "frozen weighted sum")
    print(f"wrote {args.output}: {adapter_set.task} ({adapter_set.upstream}, {method}), {size / 1e6:.2f} MB"
          + (f", threshold {adapter_set.threshold:.6f} at the dev EER" if adapter_set.threshold is not None else ""))
    return 0
