import json, shutil
def test_show(looped):
    project, truth = looped
    print({k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in truth.items() if k not in ("status", "flag_1", "train", "retrain")})
    print(truth["status"]["splits"], truth["status"]["origins"], truth["status"]["rejects"], truth["evaluate"]["top1"], truth["train"].top1, truth["retrain"][0].top1)
    shutil.rmtree("/tmp/dash/proj", ignore_errors=True)
    shutil.copytree(project.root, "/tmp/dash/proj", ignore=shutil.ignore_patterns("db"))
