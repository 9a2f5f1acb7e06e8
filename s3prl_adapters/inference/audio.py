"""Reading a user's audio for inference: any format soundfile reads, any sample rate and channel
count; the waveform comes back as 16 kHz mono float32, with a note of what was converted."""

from typing import Sequence, Tuple

import torch

from s3prl_adapters.errors import UserError

SAMPLE_RATE = 16000


def read_audio(path: str) -> Tuple[torch.Tensor, dict]:
    """(16 kHz mono waveform, {'sample_rate', 'channels', 'seconds'} of the file; plus 'resampled_from'
    and 'mixed_to_mono' when converted). Unreadable audio raises UserError."""
    import soundfile as sf

    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile's error types vary by format
        raise UserError(f"{path}: not readable audio ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if data.shape[0] == 0:
        raise UserError(f"{path}: no samples")
    note = {"sample_rate": int(rate), "channels": int(data.shape[1]), "seconds": round(data.shape[0] / rate, 3)}
    wav = torch.from_numpy(data)
    if wav.shape[1] > 1:
        wav = wav.mean(dim=1, keepdim=True)  # mix down: the average of the channels
        note["mixed_to_mono"] = True
    wav = wav[:, 0].contiguous()
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        wav = AF.resample(wav, rate, SAMPLE_RATE)
        note["resampled_from"] = int(rate)
    return wav, note


def apply_effects(wav: torch.Tensor, effects: Sequence[Sequence[str]]) -> torch.Tensor:
    """A recipe's sox chain (e.g. gain, VAD) on a 16 kHz mono waveform, as its loader applies it to a file."""
    if not effects:
        return wav
    from torchaudio.sox_effects import apply_effects_tensor

    out, _ = apply_effects_tensor(wav.unsqueeze(0), SAMPLE_RATE, [list(e) for e in effects])
    return out.squeeze(0)
