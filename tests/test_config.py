"""The project file: init, validation errors a curator can act on, where the project is."""

from __future__ import annotations

import tomllib

import pytest

from fieldguide.config import (
    CONFIG_NAME,
    PROJECT_ENV,
    Config,
    dump_config,
    init_project,
    load_config,
    open_project,
    project_dir_from,
)
from fieldguide.errors import ConfigError


def _write(tmp_path, text: str):
    path = tmp_path / CONFIG_NAME
    path.write_text(text)
    return path


def test_init_writes_a_valid_commented_project_file(tmp_path):
    project = init_project(tmp_path / "My Birds!", None)
    path = tmp_path / "My Birds!" / CONFIG_NAME
    assert project.config_path == path
    text = path.read_text()
    data = tomllib.loads(text)
    assert data["project"]["name"] == "My-Birds"  # the folder name, made a slug
    assert set(data) == set(Config.model_fields)  # every section written out
    assert data["ingest"]["workers"] == 4
    assert "# FiftyOne dataset name; empty: derived" in text
    assert load_config(path) == project.config  # what init writes reads back the same
    # places on disk all lie under the project
    for place in (project.database_dir, project.warehouse_path, project.runs_dir,
                  project.embeddings_dir, project.checkpoints_dir, project.labelstudio_dir):
        assert place.parent == project.root
    assert project.dataset_name.startswith("fieldguide-My-Birds-")


def test_init_keeps_an_existing_file(tmp_path):
    init_project(tmp_path, "first")
    path = tmp_path / CONFIG_NAME
    path.write_text(path.read_text().replace("workers = 4", "workers = 7"))
    again = init_project(tmp_path, "second")
    assert again.config.project.name == "first"
    assert again.config.ingest.workers == 7
    with pytest.raises(ConfigError, match="already exists"):
        init_project(tmp_path, "third", exist_ok=False)


def test_dataset_names_of_same_named_projects_differ(tmp_path):
    a = init_project(tmp_path / "a", "same")
    b = init_project(tmp_path / "b", "same")
    assert a.dataset_name != b.dataset_name
    path = tmp_path / "c" / CONFIG_NAME
    path.parent.mkdir()
    path.write_text('[project]\nname = "c"\n[store]\ndataset_name = "birds"\n')
    assert open_project(tmp_path / "c").dataset_name == "birds"


def test_minimal_file_takes_defaults(tmp_path):
    config = load_config(_write(tmp_path, '[project]\nname = "moths"\n'))
    assert config.project.name == "moths"
    assert config.models.batch_size == 64
    assert config.predict.folds == 5
    assert ".jpg" in config.ingest.extensions



def test_the_moved_constants_keep_their_values(tmp_path):
    """The settings that were constants in the code default to the values the code had."""
    config = load_config(_write(tmp_path, '[project]\nname = "moths"\n'))
    pl = config.pseudolabel
    assert (pl.threshold, pl.ema_decay, pl.mu, pl.lambda_u, pl.epochs, pl.balance, pl.mode) == (
        0.7, 0.9999, 3, 1.0, 40, True, "head")
    assert config.signals.weights == {"label_quality": 0.5, "knn_disagreement": 0.25, "consensus_quality": 0.25,
                                      "entropy_aum": 0.1}
    assert (config.app.port, config.dashboards.port) == (5151, 8501)
    assert (config.dashboards.outlier_threshold, config.dashboards.matrix_max_classes) == (0.2, 40)


def test_non_default_settings_read_back_from_the_file(tmp_path):
    project = init_project(tmp_path, "moths")
    text = project.config_path.read_text()
    assert "weights = { label_quality = 0.5, knn_disagreement = 0.25" in text  # an inline table
    text = (text.replace("weights = { label_quality = 0.5,", 'weights = { "odd key" = 2.0, label_quality = 0.75,')
            .replace("mu = 3", "mu = 5").replace("port = 5151", "port = 6200"))
    project.config_path.write_text(text)
    config = open_project(tmp_path).config
    assert config.signals.weights["label_quality"] == 0.75 and config.signals.weights["odd key"] == 2.0
    assert (config.pseudolabel.mu, config.app.port) == (5, 6200)
    assert load_config(_write(tmp_path, dump_config(config))) == config  # dict keys written back as TOML


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[project]\nname = "x"\n[ingest]\nworkerz = 3\n', "unknown key 'ingest.workerz'"),
        ('[project]\nname = "x"\n[modles]\nbackbone = "a"\n', "unknown key 'modles'"),
        ('[store]\ndataset_name = "x"\n', "missing key 'project'"),
        ('[project]\nname = "x"\n[ingest]\nworkers = 0\n', "'ingest.workers': Input should be greater than or equal to 1 (got 0)"),
        ('[project]\nname = "x"\n[predict]\nfolds = "five"\n', "'predict.folds': Input should be a valid integer"),
        ('[project]\nname = "x"\n[labelstudio]\nport = 70000\n', "'labelstudio.port'"),
        ('[project]\nname = "has space"\n', "'project.name': Value error, use letters, digits"),
        ('[project]\nname = "x"\n[signals]\nweights = { knn_disagreement = -1.0 }\n',
         "'signals.weights.knn_disagreement': Input should be greater than or equal to 0 (got -1.0)"),
        ('[project]\nname = "x"\n[pseudolabel]\nthreshold = 1.5\n', "'pseudolabel.threshold'"),
        ('[project]\nname = "x"\n[dashboards]\nport = 0\n', "'dashboards.port'"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors_naming_the_key(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


def test_two_bad_keys_are_both_named(tmp_path):
    path = _write(tmp_path, '[project]\nname = "x"\n[models]\nbatch_size = 0\ncolour = "red"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "'models.batch_size'" in str(info.value)
    assert "unknown key 'models.colour'" in str(info.value)


def test_not_toml_is_a_one_line_error(tmp_path):
    path = _write(tmp_path, "[project\nname = x\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_file_says_how_to_create_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        open_project(tmp_path / "nowhere")
    message = str(info.value)
    assert f"{tmp_path / 'nowhere' / CONFIG_NAME} does not exist" in message
    assert f"fieldguide init {tmp_path / 'nowhere'}" in message
    assert "--project" in message


def test_project_folder_from_option_env_or_cwd(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "opt").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    assert project_dir_from(None) == tmp_path
    monkeypatch.setenv(PROJECT_ENV, str(tmp_path / "env"))
    assert project_dir_from(None) == tmp_path / "env"
    assert project_dir_from("opt") == tmp_path / "opt"  # the option wins, relative to the cwd
    monkeypatch.setenv("HOME", str(tmp_path))
    assert project_dir_from("~/opt") == tmp_path / "opt"


def test_open_project_follows_the_environment(tmp_path, monkeypatch):
    init_project(tmp_path / "p", "envproj")
    monkeypatch.setenv(PROJECT_ENV, str(tmp_path / "p"))
    monkeypatch.chdir(tmp_path)
    project = open_project(None)
    assert project.root == tmp_path / "p"
    assert project.config.project.name == "envproj"


def test_a_project_with_the_old_head_recipe_trains_with_the_new_one(tmp_path, caplog):
    from fieldguide.config import init_project, open_project
    from fieldguide.config.sections import TrainSection

    p = init_project(tmp_path / "old", "old")
    p.config.train.epochs, p.config.train.lr, p.config.train.batch_size = 40, 3e-3, 128
    p.config_path.write_text(dump_config(p.config))
    with caplog.at_level("WARNING"):
        train = open_project(p.root).config.train
    new = TrainSection()
    assert (train.epochs, train.lr, train.batch_size) == (new.epochs, new.lr, new.batch_size) == (200, 1e-2, 0)
    assert "old head recipe" in caplog.text
    # a value of one's own (here: 41 epochs) is kept as it is
    p.config.train.epochs = 41
    p.config_path.write_text(dump_config(p.config))
    train = open_project(p.root).config.train
    assert (train.epochs, train.lr, train.batch_size) == (41, 3e-3, 128)
