"""`s3prl-adapters pretrain-tiny OUT.pt`: self-supervised pretraining of a small WavLM, offline, on CPU.

WavLM's recipe scaled down (HuBERT iteration 1): frames of unlabelled generated speech are clustered
by k-means on MFCCs; S3PRL's own WavLM module masks spans of its CNN features with `mask_emb` and
learns to predict the cluster of every masked frame (cross-entropy, masked frames only). As in
WavLM, a fraction of the inputs is mixed with a segment of another utterance of the batch
(utterance mixing, a denoising task): the targets stay those of the primary utterance.

The output is a plain S3PRL `{'cfg', 'model'}` checkpoint, so `wavlm_local` and every adapter
upstream load it unchanged. Deterministic for a seed; resumable from `OUT.pt.state`."""

import glob
import json
import os
import time
from dataclasses import asdict

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio
from tqdm import tqdm

from s3prl.upstream.wavlm.modules import GradMultiply

from s3prl_adapters.method.backbone import build_wavlm, save_checkpoint
from s3prl_adapters.errors import UserError
from s3prl_adapters.tools.pretrain_config import PretrainConfig

HOP, WIN = 320, 400  # 20 ms targets: one per WavLM frame


def wavlm_cfg(cfg: PretrainConfig) -> dict:
    from s3prl_adapters.method.backbone import BASE_PLUS_CFG

    c = cfg.cnn_channels
    out = dict(BASE_PLUS_CFG)
    out.update(
        encoder_layers=cfg.layers, encoder_embed_dim=cfg.dim, encoder_ffn_embed_dim=4 * cfg.dim,
        encoder_attention_heads=4, conv_feature_layers=f"[({c},10,5)] + [({c},3,2)] * 4 + [({c},2,2)] * 2",
        conv_pos=32, conv_pos_groups=8, mask_prob=cfg.mask_prob, mask_length=cfg.mask_length,
    )
    return out


def generate_corpus(out_dir: str, n: int, seed: int) -> list:
    """Unlabelled speech from voices, sentences and channels of a random stream of its own
    (seed offset 1000), so no downstream test speaker or recording is reused."""
    from s3prl_adapters.data import texts
    from s3prl_adapters.data.mini_superb import Job, Speakers, jitter, render_job, ssml
    from s3prl_adapters.data.synth import Channel
    from multiprocessing import Pool

    rng = np.random.default_rng([seed, 1000])
    voices = Speakers(os.path.join(out_dir, ".voices"), rng, "pt")
    speakers = [voices.new() for _ in range(120)]
    jobs = []
    for i in range(n):
        sp = speakers[i % len(speakers)]
        if rng.random() < 0.3:
            _, phrases = texts.FSC_INTENTS[rng.integers(len(texts.FSC_INTENTS))]
            text = texts.command(rng, phrases)
        else:
            text = texts.sentence(rng)
        pitch, rate = jitter(rng, sp)
        jobs.append(Job(voices.bank.root, sp.base_voice, sp.name, ssml(text), pitch, rate, Channel.draw(rng),
                        os.path.join(out_dir, f"{i:05d}.wav"), "WAV"))
    with Pool(2) as pool:
        list(tqdm(pool.imap(render_job, jobs, chunksize=16), total=len(jobs), desc="pretraining corpus", disable=None))
    voices.bank.remove()
    return sorted(glob.glob(os.path.join(out_dir, "*.wav")))


def mfcc_frames(wav: np.ndarray) -> np.ndarray:
    """MFCC(13) + deltas + delta-deltas, one row per 20 ms: (frames, 39)."""
    mfcc = torchaudio.compliance.kaldi.mfcc(torch.from_numpy(wav).unsqueeze(0) * 32768, sample_frequency=16000,
                                            frame_length=WIN / 16, frame_shift=HOP / 16, num_ceps=13)
    d1 = torchaudio.functional.compute_deltas(mfcc.T).T
    d2 = torchaudio.functional.compute_deltas(d1.T).T
    return torch.cat([mfcc, d1, d2], dim=1).numpy()


def cluster_targets(wavs: list, clusters: int, seed: int) -> list:
    from sklearn.cluster import MiniBatchKMeans

    feats = [mfcc_frames(w) for w in tqdm(wavs, desc="MFCC", disable=None)]
    stacked = np.concatenate(feats)
    mean, std = stacked.mean(0), stacked.std(0) + 1e-5
    rng = np.random.default_rng(seed)
    sample = stacked[rng.choice(len(stacked), size=min(len(stacked), 100_000), replace=False)]
    km = MiniBatchKMeans(n_clusters=clusters, random_state=seed, batch_size=10_000, n_init=3).fit((sample - mean) / std)
    return [km.predict((f - mean) / std).astype(np.int64) for f in feats]


def _masked_prediction_loss(model, head, wavs, targets, mask_rng):
    """Cross-entropy of the cluster of each masked frame, computed with S3PRL WavLM's own pieces."""
    np.random.seed(int(mask_rng.integers(2**31)))  # WavLM's compute_mask_indices draws from numpy
    features = GradMultiply.apply(model.feature_extractor(wavs), 0.1)  # WavLM/HuBERT: CNN learns at 0.1x
    features = model.layer_norm(features.transpose(1, 2))
    features = model.post_extract_proj(features) if model.post_extract_proj is not None else features
    x, mask = model.apply_mask(features.clone(), None)
    x, _ = model.encoder(x)
    frames = min(x.size(1), targets.size(1))
    logits = head(x[:, :frames][mask[:, :frames]])
    return F.cross_entropy(logits, targets[:, :frames][mask[:, :frames]])


def pretrain_tiny(out: str, cfg: PretrainConfig, work_dir: str = None, stop_after: int = None) -> dict:
    """Pretrain (or resume) and write `out`; `stop_after` ends this run early after that many steps
    in all, leaving the resumable state behind (as a kill after a state save would)."""
    torch.manual_seed(cfg.seed)
    work_dir = work_dir or out + ".work"
    os.makedirs(work_dir, exist_ok=True)
    corpus = os.path.join(work_dir, "corpus")
    files = sorted(glob.glob(os.path.join(corpus, "*.wav")))
    if len(files) != cfg.corpus_utterances:
        files = generate_corpus(corpus, cfg.corpus_utterances, cfg.seed)
    wavs = [sf.read(f, dtype="float32")[0] for f in files]
    targets_path = os.path.join(work_dir, f"targets_k{cfg.clusters}.npz")
    if os.path.exists(targets_path):
        loaded = np.load(targets_path)
        targets = [loaded[str(i)] for i in range(len(wavs))]
    else:
        targets = cluster_targets(wavs, cfg.clusters, cfg.seed)
        np.savez(targets_path, **{str(i): t for i, t in enumerate(targets)})

    torch.manual_seed(cfg.seed)
    model = build_wavlm(wavlm_cfg(cfg))
    head = torch.nn.Linear(cfg.dim, cfg.clusters)
    params = [p for n, p in model.named_parameters()] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    warmup = max(1, int(0.08 * cfg.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warmup))))
    state_path = out + ".state"
    step, losses = 0, []
    if os.path.exists(state_path):  # resume: everything that decides the remaining steps
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["config"] != asdict(cfg):
            raise UserError(f"{state_path}: was written with other settings; delete it or use the same ones")
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, losses = state["step"], state["losses"]
        torch.set_rng_state(state["torch_rng"])  # dropout continues where it stopped

    crop = int(cfg.crop_seconds * 16000)
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="pretraining", disable=None)
    start = time.time()
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])  # per-step stream: resuming replays exactly
        idx = rng.choice(len(wavs), size=cfg.batch, replace=False)
        batch_w, batch_t = [], []
        for i in idx:
            w, t = wavs[i], targets[i]
            frames = min(len(t), (len(w) - WIN) // HOP + 1)
            span = min(frames, crop // HOP)
            f0 = int(rng.integers(0, frames - span + 1))
            seg = w[f0 * HOP: f0 * HOP + span * HOP + WIN - HOP]
            batch_w.append(np.pad(seg, (0, crop + WIN - HOP - len(seg))))
            batch_t.append(np.pad(t[f0:f0 + span], (0, crop // HOP - span), constant_values=-100))
        w = torch.from_numpy(np.stack(batch_w))
        for b in range(cfg.batch):  # utterance mixing: another utterance's segment, < 50 % overlap
            if rng.random() < cfg.mix_prob:
                other = wavs[int(rng.integers(len(wavs)))]
                length = int(rng.integers(1, w.size(1) // 2))
                src = int(rng.integers(0, max(1, len(other) - length)))
                dst = int(rng.integers(0, w.size(1) - length))
                piece = torch.from_numpy(other[src:src + length].copy())
                piece = F.pad(piece, (0, length - len(piece)))
                ratio = 10 ** (rng.uniform(-5, 5) / 20)
                scale = w[b].pow(2).mean().sqrt() / (piece.pow(2).mean().sqrt() + 1e-6) / ratio
                w[b, dst:dst + length] += scale * piece
        t = torch.from_numpy(np.stack(batch_t))
        loss = _masked_prediction_loss(model, head, w, t, rng)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(round(loss.item(), 4))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
        stopping = stop_after is not None and step >= stop_after
        if step % 250 == 0 or step == cfg.steps or stopping:
            state = {"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "step": step, "losses": losses, "config": asdict(cfg),
                     "torch_rng": torch.get_rng_state()}
            torch.save(state, state_path + ".tmp")
            os.replace(state_path + ".tmp", state_path)
        if stopping and step < cfg.steps:
            bar.close()
            return {"stopped_at": step, "losses": losses}
    bar.close()
    model.cfg.mask_prob = 0.65  # downstream use never masks (S3PRL calls mask=False)
    save_checkpoint(model, out)
    report = {"config": asdict(cfg), "losses_every_50": [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)],
              "final_loss": float(np.mean(losses[-100:])), "seconds_this_run": round(time.time() - start, 1)}
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    return report
