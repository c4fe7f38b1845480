"""`gigamil train` / `gigamil predict` command lines (frozen encoder, relative store paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from gigamil.cli import main


def _predict_refuses_unknown_labels_and_a_missing_cuda(
    predict_args: list[str], slides: pd.DataFrame, tmp_path: Path, capsys
) -> None:
    """A label the model does not know is an error (it was copied to the output as it was);
    --device cuda without CUDA is named as the option."""
    capsys.readouterr()
    slides.assign(label="tumour").to_csv(tmp_path / "tumour.csv", index=False)
    assert main([*predict_args[:4], str(tmp_path / "tumour.csv"), *predict_args[5:]]) == 2
    err = capsys.readouterr().err
    assert "label(s) ['tumour'] are not among the classes ['normal', 'lesion']" in err
    slides.assign(label="Lesion").to_csv(tmp_path / "typo.csv", index=False)
    assert main([*predict_args[:4], str(tmp_path / "typo.csv"), *predict_args[5:]]) == 2
    assert "(did you mean 'Lesion' -> 'lesion'?)" in capsys.readouterr().err
    # --model naming the fold's folder: said 'checkpoint not found' of a folder that exists
    folder = str(Path(predict_args[2]).parent)
    assert main([*predict_args[:2], folder, *predict_args[3:]]) == 2
    assert f"{folder}: is a folder, not a checkpoint file (give its model.pt)" in (
        capsys.readouterr().err
    )
    if not torch.cuda.is_available():
        assert main([*predict_args, "--device", "cuda"]) == 2
        assert "--device: cuda requested but no CUDA device" in capsys.readouterr().err


def _predict_without_attention_dir(args: list[str], expected: pd.DataFrame, tmp_path: Path) -> None:
    """Without --attention-dir: the probabilities only (a new user's trial found it required)."""
    no_att = [a for a in args if a not in ("--attention-dir", str(tmp_path / "att2"))]
    no_att[no_att.index("--out") + 1] = str(tmp_path / "no_att.csv")
    assert main(no_att) == 0
    df_no = pd.read_csv(tmp_path / "no_att.csv", keep_default_na=False)
    np.testing.assert_array_equal(df_no.prob_lesion, expected.prob_lesion)


def _ensemble_without_labels_says_one_line(
    ens: list[str], cohort: str, tmp_path: Path, capsys
) -> None:
    """gigamil ensemble of unlabelled predictions prints one line, not summary.json (a new
    user's trial)."""
    capsys.readouterr()
    assert main([*ens, str(tmp_path / "ens")]) == 0
    assert (tmp_path / "ens" / "predictions.csv").is_file()
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and said.startswith(f"cohort {cohort}: ")
    assert "slide(s) predicted by 1 model(s)" in said and "/ens/predictions.csv" in said


def test_train_and_predict_cli(mil_bags, tmp_path: Path, capsys) -> None:
    train = mil_bags.cohort(tmp_path / "stores", 4, 5, "t")
    val = mil_bags.cohort(tmp_path / "stores", 2, 6, "v")
    for df in (train, val):  # store paths relative to the CSV
        df["store"] = [str(Path(p).relative_to(tmp_path)) for p in df["store"]]
    train.to_csv(tmp_path / "train.csv", index=False)
    val.to_csv(tmp_path / "val.csv", index=False)
    cfg = {
        "experiment": "cli",
        "classes": mil_bags.classes,
        "cohorts": {"c": {"sheet": "sheet.csv", "role": "train"}},
        "model": dict(mil_bags.model, freeze_encoder=True, pool="gated_abmil"),
        "training": {"device": "cpu", "epochs": 2, "max_instances_per_forward_pass": 5},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "model"
    args = [
        "train",
        "--config",
        str(tmp_path / "config.yaml"),
        "--train-csv",
        str(tmp_path / "train.csv"),
        "--val-csv",
        str(tmp_path / "val.csv"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert (out / "model.pt").is_file() and (out / "last.pt").is_file()
    state = torch.load(out / "last.pt", weights_only=True)
    first = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    # frozen encoder: its weights did not move, the head's did (or the best epoch is the first)
    enc_keys = [k for k in first if k.startswith("feature_encoder.1.")]
    assert enc_keys and all(torch.equal(state["model"][k], first[k]) for k in enc_keys)
    assert main(args + ["--no-resume"]) == 0
    # without --val-csv: no validation slides, as with cv.val_fraction: 0
    no_val = [a for a in args if a not in ("--val-csv", str(tmp_path / "val.csv"))]
    assert main([*no_val[:-1], str(tmp_path / "no_val")]) == 0
    log = pd.read_csv(tmp_path / "no_val" / "train_log.csv")
    assert (log["n_val_bags"] == 0).all() and log["val_loss"].isna().all()

    preds = tmp_path / "preds.csv"
    assert (
        main(
            [
                "predict",
                "--model",
                str(out / "model.pt"),
                "--slides",
                str(tmp_path / "val.csv"),
                "--out",
                str(preds),
                "--attention-dir",
                str(tmp_path / "att"),
                "--chunk",
                "3",
            ]
        )
        == 0
    )
    df = pd.read_csv(preds)
    assert list(df.slide_id) == list(val.slide_id)
    assert np.allclose(df.prob_normal + df.prob_lesion, 1)
    assert all((tmp_path / "att" / f"{s}.npy").is_file() for s in val.slide_id)

    # slides to predict need no label column (a `role: predict` cohort): same probabilities
    val.drop(columns="label").to_csv(tmp_path / "unlabelled.csv", index=False)
    unlabelled = [
        "predict",
        "--model",
        str(out / "model.pt"),
        "--slides",
        str(tmp_path / "unlabelled.csv"),
        "--out",
        str(tmp_path / "unlabelled_preds.csv"),
        "--attention-dir",
        str(tmp_path / "att2"),
        "--chunk",
        "3",
    ]
    assert main(unlabelled) == 0
    df2 = pd.read_csv(tmp_path / "unlabelled_preds.csv", keep_default_na=False)
    assert (df2["label"] == "").all() and list(df2.slide_id) == list(val.slide_id)
    np.testing.assert_allclose(df2.prob_lesion.astype(float), df.prob_lesion, rtol=1e-5)
    _predict_without_attention_dir(unlabelled, df2, tmp_path)

    # --fold K: the fold column the pipeline's per-fold CSVs have, so ensemble takes it as it is
    fold_csv = tmp_path / "fold3" / "v.csv"
    assert main([*unlabelled[:6], str(fold_csv), *unlabelled[7:], "--fold", "3"]) == 0
    df3 = pd.read_csv(fold_csv, keep_default_na=False)
    assert list(df3.columns[:5]) == ["slide_id", "patient_id", "cohort", "label", "fold"]
    assert (df3["fold"] == 3).all()
    cohort = str(val.cohort.iloc[0])
    ens = ["ensemble", "--cohort", cohort, "--predictions", str(fold_csv), "--out"]
    _ensemble_without_labels_says_one_line(ens, cohort, tmp_path, capsys)

    _predict_refuses_unknown_labels_and_a_missing_cuda(unlabelled, val, tmp_path, capsys)
    capsys.readouterr()
    bad = train.assign(label="tumour")
    bad.to_csv(tmp_path / "bad.csv", index=False)
    args_bad = args[:4] + [str(tmp_path / "bad.csv")] + args[5:]
    assert main(args_bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tumour" in err and err.startswith("gigamil train: error:")
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "none.pt"),
                "--slides",
                str(tmp_path / "val.csv"),
                "--out",
                str(preds),
                "--attention-dir",
                str(tmp_path / "att"),
            ]
        )
        == 2
    )


def test_slides_csv_may_be_a_pipe(tmp_path: Path) -> None:
    """`gigamil predict --slides <(grep ... slides.csv)`: bash passes a pipe, not a file."""
    import os
    import threading

    from gigamil.commands.train import read_slides_csv
    from gigamil.errors import GigamilError

    fifo = tmp_path / "slides.pipe"
    os.mkfifo(fifo)
    store = tmp_path / "s1.zarr"
    store.mkdir()
    text = f"cohort,slide_id,patient_id,store\nc,s1,p1,{store}\n"
    writer = threading.Thread(target=fifo.write_text, args=(text,))
    writer.start()
    df = read_slides_csv(str(fifo), labels=False)
    writer.join(timeout=10)
    assert df[["slide_id", "label", "store"]].values.tolist() == [["s1", "", str(store)]]
    for missing in (tmp_path / "nothere.csv", tmp_path):
        with pytest.raises(GigamilError, match="file not found"):
            read_slides_csv(str(missing))


def test_train_cli_prints_the_configuration_warnings(mil_bags, tmp_path: Path, capsys) -> None:
    """As the workflow does, once, at the start (README, Troubleshooting)."""
    for name, n, seed in (("train", 2, 7), ("val", 2, 8)):
        mil_bags.cohort(tmp_path / "stores", n, seed, name[0]).to_csv(tmp_path / f"{name}.csv")
    cfg = {
        "experiment": "cli",
        "classes": mil_bags.classes,
        "cohorts": {"c": {"sheet": "sheet.csv", "role": "train"}},
        "model": dict(mil_bags.model, freeze_encoder=True),
        "training": {"device": "cpu", "epochs": 1, "early_stopping": {"min_epochs": 1}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    args = ["train", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "m")]
    args += ["--train-csv", str(tmp_path / "train.csv"), "--val-csv", str(tmp_path / "val.csv")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "gigamil: warning: training.early_stopping.min_epochs (1) >= training.epochs (1)" in err


def test_a_missing_relative_store_names_both_places_looked(tmp_path, monkeypatch):
    """A relative store is looked for from the working directory, then beside the CSV: a new
    user saw only the second place."""
    from gigamil.commands.train import read_slides_csv
    from gigamil.errors import GigamilError

    (tmp_path / "csvs").mkdir()
    csv = tmp_path / "csvs" / "slides.csv"
    csv.write_text("cohort,slide_id,patient_id,label,store\nc,s1,p1,normal,stores/s1.zarr\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GigamilError) as err:
        read_slides_csv(str(csv))
    msg = str(err.value)
    assert f"stores/s1.zarr (looked for {tmp_path / 'stores' / 's1.zarr'} and " in msg
    assert str(tmp_path / "csvs" / "stores" / "s1.zarr") in msg


def test_train_and_predict_a_fold_of_folds_csv(mil_bags, tmp_path: Path, capsys) -> None:
    """`gigamil splits` -> `train --folds` -> `predict --folds`: no slide CSVs by hand; the
    stores are found as the workflow lays them out (DIR/<cohort>/<slide_id>.zarr)."""
    from gigamil.folds import write_folds
    from gigamil.splits import make_folds

    stores = tmp_path / "stores"
    slides = mil_bags.cohort(stores / "c", 8, 7, "s")
    folds = make_folds(slides.drop(columns="store"), folds=2, val_fraction=0.25, seed=0)
    write_folds(folds, tmp_path / "folds.csv")
    cfg = {
        "experiment": "cli",
        "classes": mil_bags.classes,
        "cohorts": {"c": {"sheet": "sheet.csv", "role": "train"}},
        "model": dict(mil_bags.model, freeze_encoder=True),
        "training": {"device": "cpu", "epochs": 1, "max_instances_per_forward_pass": 8},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    fold = ["--folds", str(tmp_path / "folds.csv"), "--fold", "1", "--stores", str(stores)]
    out = tmp_path / "fold1"
    train = ["train", "--config", str(tmp_path / "config.yaml"), *fold, "--out", str(out)]
    assert main(train) == 0
    mine = folds[folds["fold"] == 1]
    roles = {r: sorted(mine.loc[mine["role"] == r, "slide_id"]) for r in ("train", "val", "test")}
    assert roles["val"] and roles["test"]
    log = pd.read_csv(out / "train_log.csv")
    assert (log["n_train_bags"] == len(roles["train"])).all()
    assert (log["n_val_bags"] == len(roles["val"])).all()
    seen = torch.load(out / "model.pt", weights_only=True)["training_slides"]["slides"]
    assert seen == [["c", s] for s in sorted(roles["train"] + roles["val"])]

    predict = ["predict", "--model", str(out / "model.pt"), *fold, "--out", str(tmp_path / "p.csv")]
    assert main([*predict, "--attention-dir", str(tmp_path / "att")]) == 0
    preds = pd.read_csv(tmp_path / "p.csv")
    assert sorted(preds["slide_id"]) == roles["test"] and (preds["fold"] == 1).all()
    assert "not a test of it" not in capsys.readouterr().err  # the fold's own test slides
    # fold 0's test slides are fold 1's training slides: a mistyped --fold gave "out-of-fold"
    # predictions of slides the model trained on, with a warning only
    other = ["predict", "--model", str(out / "model.pt"), *fold[:3], "0", *fold[4:]]
    assert (
        main([*other, "--out", str(tmp_path / "q.csv"), "--attention-dir", str(tmp_path / "a0")])
        == 2
    )
    assert "were training or validation slides of this model" in capsys.readouterr().err
    assert not (tmp_path / "q.csv").exists()

    capsys.readouterr()
    errors = {
        "--folds needs --fold K": [*train[:5], *train[7:]],
        "no fold 5; it has folds 0 to 1": [*train[:6], "5", *train[7:]],
        "have no store under": [*train[:8], str(tmp_path / "nowhere"), *train[9:]],
        "--fold goes with --folds": [*train[:3], "--train-csv", "t.csv", *train[5:7], "--out", "x"],
        "--stores goes with --folds FOLDS.csv (--slides names each store)": [
            *predict[:3],
            "--slides",
            "s.csv",
            *predict[7:],
            "--attention-dir",
            "a",
        ],
    }
    for message, argv in errors.items():
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_slides_csv_reads_ids_as_written_and_names_an_empty_cell(tmp_path: Path) -> None:
    from gigamil.commands.train import read_slides_csv
    from gigamil.errors import GigamilError

    (tmp_path / "s.zarr").mkdir()
    path = tmp_path / "slides.csv"
    path.write_text("cohort,slide_id,patient_id,label,store\nc,s1,NA,normal,s.zarr\n")
    df = read_slides_csv(str(path))
    assert df["patient_id"].tolist() == ["NA"]  # an id, not a missing value
    path.write_text(path.read_text() + "c,s2,P2,normal,\n")
    with pytest.raises(GigamilError, match=r"slides.csv: line 3 has no store"):
        read_slides_csv(str(path))
    path.write_text("cohort,slide_id,patient_id,store\nc,s1,P1,s.zarr\n")  # to predict
    assert read_slides_csv(str(path), labels=False)["label"].tolist() == [""]


def test_slides_csv_header_spacing_case_and_a_slide_file_as_store_are_named(tmp_path: Path) -> None:
    """README's column list copied as a header (", " between names) read as missing columns; a
    "Label" header was dropped and every label read as empty; a slide file in the store column
    got zarr's own message."""
    from gigamil.commands.train import read_slides_csv
    from gigamil.errors import GigamilError

    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s1.tiff").write_bytes(b"II*")
    path = tmp_path / "slides.csv"
    path.write_text("cohort, slide_id, patient_id, label, store\nc, s1, P1, normal, s.zarr\n")
    df = read_slides_csv(str(path))
    assert df.loc[0, ["slide_id", "label"]].tolist() == ["s1", "normal"]
    assert df.loc[0, "store"] == str(tmp_path / "s.zarr")
    path.write_text("cohort,slide_id,patient_id,Label,store\nc,s1,P1,normal,s.zarr\n")
    for labels in (True, False):
        with pytest.raises(GigamilError, match="column 'Label' means 'label'.*rename it label"):
            read_slides_csv(str(path), labels=labels)
    path.write_text("slide_id,patient_id,label,path\ns1,P1,normal,s1.tiff\n")  # a cohort sheet
    with pytest.raises(GigamilError) as err:
        read_slides_csv(str(path))
    assert "missing column(s) cohort, store (" in str(err.value)
    assert "its columns: slide_id, patient_id, label, path); this looks like a cohort" in str(
        err.value
    )
    # slides to predict: the error lists the columns as written (not the empty label it adds)
    # and a close spelling of the missing one
    path.write_text("cohort,slide_id,patient_id,stores\nc,s1,P1,s.zarr\n")
    with pytest.raises(GigamilError) as err:
        read_slides_csv(str(path), labels=False)
    assert (
        "its columns: cohort, slide_id, patient_id, stores); did you mean 'stores' -> store?"
        in (str(err.value))
    )
    path.write_text("cohort,slide_id,patient_id,label,store\nc,s1,P1,normal,s1.tiff\n")
    with pytest.raises(GigamilError, match="store s1.tiff is a file, not a patch store"):
        read_slides_csv(str(path))


def test_train_says_what_to_add_to_a_config_without_cohorts_and_names_an_empty_csv(
    tmp_path: Path, capsys
) -> None:
    """A config without cohorts (the command reads none) said only "'cohorts' is a required
    property"; a slides CSV with a header only said "no training slide has patches"."""
    (tmp_path / "s.zarr").mkdir()
    csv = tmp_path / "train.csv"
    csv.write_text("cohort,slide_id,patient_id,label,store\n")
    cfg = {"experiment": "cli", "classes": ["a", "b"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    args = ["train", "--config", str(tmp_path / "config.yaml"), "--train-csv", str(csv)]
    assert main([*args, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "'cohorts' is a required property" in err and "add a cohorts entry" in err
    cfg["cohorts"] = {"main": {"sheet": "sheet.csv", "role": "train"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main([*args, "--out", str(tmp_path / "m")]) == 2
    assert f"{csv}: no slides (a header only)" in capsys.readouterr().err


def test_train_refuses_a_val_csv_with_folds(tmp_path: Path, capsys) -> None:
    """--folds reads the fold's own validation slides: a --val-csv beside it was ignored
    without a word."""
    cfg = {"classes": ["a", "b"], "cohorts": {"main": {"sheet": "sheet.csv", "role": "train"}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    args = ["train", "--config", str(tmp_path / "config.yaml"), "--folds", "folds.csv"]
    args += ["--fold", "0", "--val-csv", "val.csv", "--out", str(tmp_path / "m")]
    assert main(args) == 2
    assert "--val-csv goes with --train-csv; --folds reads the fold's own" in (
        capsys.readouterr().err
    )


def test_a_relative_store_is_found_from_the_working_directory_first(tmp_path, monkeypatch):
    """A relative store that exists from the working directory (where snakemake runs) is that
    store, even when the CSV's folder holds one of the same name."""
    from gigamil.commands.train import read_slides_csv

    (tmp_path / "stores" / "s1.zarr").mkdir(parents=True)
    (tmp_path / "csvs" / "stores" / "s1.zarr").mkdir(parents=True)
    csv = tmp_path / "csvs" / "slides.csv"
    csv.write_text("cohort,slide_id,patient_id,label,store\nc,s1,p1,normal,stores/s1.zarr\n")
    monkeypatch.chdir(tmp_path)
    store = read_slides_csv(str(csv))["store"].iloc[0]
    assert Path(store).resolve() == (tmp_path / "stores" / "s1.zarr").resolve()


def test_predict_help_names_the_patch_logits_it_writes(capsys) -> None:
    """--attention-dir also gets DIR/patch_logits/ (the patch score's half); its help named
    DIR/{slide_id}.npy only."""
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "DIR/patch_logits/{slide_id}.npy" in " ".join(capsys.readouterr().out.split())
