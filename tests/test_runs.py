"""training.loop.runs: which folder a run writes to, from the run records real runs leave (no training here)."""

from __future__ import annotations

from helpers import compose_train


def test_a_run_resumes_its_own_folder_and_never_takes_another_runs(tmp_path):
    from training.loop.runs import fingerprint, run_folder, write_run_record

    cfg = compose_train(["experiment=smoke", "style=starry"], tmp_path)
    train_dir = tmp_path / "outputs" / "train"
    assert run_folder(cfg) == (train_dir, None)  # free
    (train_dir / ".hydra").mkdir(parents=True)  # Hydra's files alone: still free
    assert run_folder(cfg) == (train_dir, None)

    write_run_record(train_dir, cfg.run_name, fingerprint(cfg))
    assert run_folder(cfg) == (train_dir, None)  # this run: resumed there
    other = compose_train(["experiment=smoke", "style=starry", "init=magenta_published"], tmp_path)
    own, moved = run_folder(other)
    assert own.parent == tmp_path / "outputs" / "runs" and own.name.startswith(f"{other.run_name}-")
    assert moved == f"{train_dir} is taken by another run (differs in: backbone, init, teacher) -> this run writes to {own}"

    write_run_record(own, other.run_name, fingerprint(other))
    assert run_folder(other)[0] == own  # resumed in its own folder
    # trainer.resume=false starts over in a free folder; the recorded runs stay as they were.
    fresh = compose_train(["experiment=smoke", "style=starry", "init=magenta_published", "trainer.resume=false"], tmp_path)
    assert run_folder(fresh)[0] == own.with_name(f"{own.name}-2")
    assert (train_dir / "run.json").is_file() and (own / "run.json").is_file()


def test_a_folder_of_outputs_without_a_record_is_another_runs(tmp_path):
    """A model or checkpoints written before run records existed: never resumed, never overwritten."""
    from training.loop.runs import run_folder

    cfg = compose_train(["experiment=smoke", "style=starry"], tmp_path)
    train_dir = tmp_path / "outputs" / "train"
    (train_dir / "checkpoints").mkdir(parents=True)
    (train_dir / "checkpoints" / "ckpt-00000024.npz").write_bytes(b"")
    folder, moved = run_folder(cfg)
    assert moved == f"{train_dir} is taken by another run -> this run writes to {folder}"


def test_the_fingerprint_covers_the_data(tmp_path):
    """Another data.content_dir used to resume the old run's finished checkpoint and train 0 steps."""
    from helpers import CONTENT_DIR
    from training.loop.runs import fingerprint

    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in sorted(CONTENT_DIR.glob("*.jpg"))[:2]:
        (photos / photo.name).write_bytes(photo.read_bytes())
    shipped = fingerprint(compose_train(["experiment=smoke"], tmp_path))
    other = fingerprint(compose_train(["experiment=smoke", f"data.content_dir={photos}"], tmp_path))
    assert other["data"]["content"] != shipped["data"]["content"]
    assert {k for k in shipped if shipped[k] != other[k]} == {"data"}
    # Not the step count or the learning rate: a longer run or another rate continues the same run.
    assert fingerprint(compose_train(["experiment=smoke", "trainer.steps=99", "trainer.learning_rate=1e-5"], tmp_path)) == shipped


def test_the_teacher_style_target_enters_the_fingerprint_only_when_not_the_painting(tmp_path):
    """A run against the teacher's textures, or with a contrast term, is another run; runs without them keep
    their folders."""
    from training.loop.runs import fingerprint

    base = ["experiment=smoke", "style=starry", "model=realtime", "teacher=magenta_published"]
    painting = fingerprint(compose_train(base, tmp_path))
    assert "style_target" not in painting["teacher"]
    assert fingerprint(compose_train([*base, "teacher.style_target=painting"], tmp_path)) == painting
    textured = fingerprint(compose_train([*base, "teacher.style_target=teacher"], tmp_path))
    assert textured["teacher"] == {**painting["teacher"], "style_target": "teacher"}
    assert painting["teacher"]["contrast_weight"] == 2.5  # model=realtime's default
    plain = fingerprint(compose_train([*base, "teacher.contrast_weight=0"], tmp_path))
    assert plain["teacher"] == {k: v for k, v in painting["teacher"].items() if k != "contrast_weight"}
