"""The service's guards as functions, without a server (tests/test_service_auth.py and
test_service_api.py check them over HTTP): the bearer token, the bind rule, the token file,
and the confinement of data paths to the --data-root directories."""

import numpy as np
import pytest

from memtrain.config import JobConfig
from memtrain.errors import MemtrainError
from memtrain.service import planning, security

TOKEN = "s3cret-token-0123456789"


def test_token_ok_accepts_only_the_exact_bearer_token():
    tokens = security.Tokens.single(TOKEN)
    assert security.token_ok(None, None) and security.token_ok(None, "anything")  # no token configured
    assert security.token_ok(tokens, f"Bearer {TOKEN}")
    assert security.token_ok(tokens, f"Bearer {TOKEN}  ")  # trailing whitespace of a header line
    for header in (None, "", TOKEN, f"bearer {TOKEN}", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                   "Bearer ", f"xBearer {TOKEN}"):
        assert not security.token_ok(tokens, header), header


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                           ("::", False), ("example.org", False), ("", False)])
def test_is_loopback(host, loopback):
    assert security.is_loopback(host) is loopback


def test_binding_beyond_this_machine_needs_a_token():
    security.check_bind("127.0.0.1", None)
    security.check_bind("0.0.0.0", security.Tokens.single(TOKEN))
    with pytest.raises(MemtrainError) as exc:
        security.check_bind("0.0.0.0", None)
    assert str(exc.value) == ("--host 0.0.0.0: binding beyond this machine needs --token-file (anyone who can reach "
                              "the port could run jobs)")


def test_read_tokens_of_a_single_token_file(tmp_path):
    assert security.read_tokens(None) is None
    f = tmp_path / "token"
    f.write_text(f"  {TOKEN}\n")
    assert security.read_tokens(f) == security.read_tokens(str(f)) == security.Tokens({TOKEN: "default"})
    f.write_text("x" * 16)
    assert security.read_tokens(f).users == {"x" * 16: "default"}  # 16 characters: the shortest accepted
    f.write_text("x" * 15 + "\n")
    with pytest.raises(MemtrainError, match=f"--token-file: {f} holds a token of 15 characters; expected at "
                                            "least 16"):
        security.read_tokens(f)
    with pytest.raises(MemtrainError, match=r"--token-file: cannot read .*missing: No such file"):
        security.read_tokens(tmp_path / "missing")


def test_the_body_limit_is_one_mib():
    assert security.MAX_BODY == 1024 * 1024


# -- data-root confinement ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("confine")
    a, b, outside = base / "a", base / "b", base / "outside"
    for d in (a, b, outside, a / "sub"):
        d.mkdir()
    rng = np.random.default_rng(0)
    for path in (a / "small.npz", a / "sub" / "val.npz", b / "other.npz", outside / "secret.npz"):
        np.savez(path, X=rng.normal(size=(40, 8)).astype(np.float32), y=rng.integers(0, 3, 40))
    (a / "link.npz").symlink_to(outside / "secret.npz")
    (b / "a-link").symlink_to(a)  # a symlink to another root resolves inside it
    return a, b, outside


def check(source, roots, validation=None):
    data = {"dataset": source, **({"validation_dataset": validation} if validation else {})}
    job = {"name": "npz", "model": {"layers": [8, 3]}, "training": {"epochs": 1, "batch_size": 16}, "data": data}
    return planning.validate(job, data_roots=roots)


def test_paths_under_a_root_are_accepted_as_absolute_resolved_paths(roots):
    a, b, _ = roots
    data = check("small.npz", [a, b]).config["data"]  # relative: to the first root
    assert data["dataset"] == str((a / "small.npz").resolve())
    data = check(str(b / "other.npz"), [a, b], validation=str(a / "sub" / "val.npz")).config["data"]
    assert data["dataset"] == str((b / "other.npz").resolve())
    assert data["validation_dataset"] == str((a / "sub" / "val.npz").resolve())
    assert check(str(b / "a-link" / "small.npz"), [a, b]).config["data"]["dataset"] == str((a / "small.npz").resolve())
    cfg = JobConfig.from_dict({"data": {"dataset": f"{a / 'x-images'}, {a / 'sub' / 'x-labels'}"}})
    assert planning._confine_data(cfg, [a]).data.dataset == (  # each file of an IMAGES,LABELS pair
        f"{(a / 'x-images').resolve()},{(a / 'sub' / 'x-labels').resolve()}")
    builtin = "synthetic:classification(40, 8, 3)"
    assert check(builtin, []).config["data"]["dataset"] == builtin  # no file: no root needed


@pytest.mark.parametrize("source", ["../outside/secret.npz", "link.npz", "/etc/passwd.npz", "sub/../../outside/x.npz",
                                    "OUTSIDE", "small.npz, ../outside/secret.npz"])
def test_paths_outside_every_root_are_refused_naming_the_field(roots, source):
    a, b, outside = roots
    source = source.replace("OUTSIDE", str(outside / "secret.npz"))
    with pytest.raises(planning.SubmissionError) as exc:
        check(source, [a, b])
    message = str(exc.value)
    assert message.startswith("data.dataset: ") and "is outside the data roots (" in message
    assert f"{a.resolve()}, {b.resolve()})" in message


def test_the_validation_set_is_confined_too_and_no_root_means_no_files(roots):
    a, _, outside = roots
    with pytest.raises(planning.SubmissionError, match=r"^data.validation_dataset: .* is outside the data roots"):
        check("small.npz", [a], validation=str(outside / "secret.npz"))
    with pytest.raises(planning.SubmissionError, match=r"^data.dataset: 'small.npz' is a file, and this service "
                                                       r"reads no files \(start it with --data-root DIR\)"):
        check("small.npz", [])
    with pytest.raises(planning.SubmissionError, match=r"^data.validation_dataset: '.*' is a file, and this service"):
        check("synthetic:classification(40, 8, 3)", [], validation=str(a / "small.npz"))
    assert planning.confined("data.dataset", str(a), [a]) == a.resolve()  # the root itself is inside it
    with pytest.raises(planning.SubmissionError, match=r"^data.validation_dataset: .* is outside the data roots"):
        planning._confine_data(JobConfig.from_dict({"data": {"dataset": "digits",
                                                             "validation_dataset": str(outside / "secret.npz")}}), [a])


def test_a_source_that_is_not_a_string_is_refused_naming_it():
    cfg = JobConfig.from_dict({"data": {"dataset": "digits"}})
    cfg = cfg.with_overrides({"data.validation_dataset": 5})
    with pytest.raises(planning.SubmissionError) as exc:
        planning._confine_data(cfg, [])
    assert str(exc.value) == "data.validation_dataset: expected a source string, got 5"


def test_an_idx_images_file_alone_brings_its_labels_file_under_the_same_rule(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    for name in ("a-images-idx3-ubyte", "a-labels-idx1-ubyte", "b-images-idx3-ubyte.gz", "b-labels-idx1-ubyte.gz",
                 "c-images-idx3-ubyte"):
        (root / name).write_bytes(b"")
    (outside / "c-labels-idx1-ubyte").write_bytes(b"")
    (root / "c-labels-idx1-ubyte").symlink_to(outside / "c-labels-idx1-ubyte")
    r = root.resolve()

    def confine(source):
        return planning._confine_data(JobConfig.from_dict({"data": {"dataset": source}}), [root]).data.dataset

    assert confine("a-images-idx3-ubyte") == f"{r / 'a-images-idx3-ubyte'},{r / 'a-labels-idx1-ubyte'}"
    assert confine("b-images-idx3-ubyte.gz") == f"{r / 'b-images-idx3-ubyte.gz'},{r / 'b-labels-idx1-ubyte.gz'}"
    pair = "a-images-idx3-ubyte,a-labels-idx1-ubyte"  # given as a pair: nothing added
    assert confine(pair) == f"{r / 'a-images-idx3-ubyte'},{r / 'a-labels-idx1-ubyte'}"
    with pytest.raises(planning.SubmissionError) as exc:  # the labels file found beside it is a link out
        confine("c-images-idx3-ubyte")
    assert str(exc.value).startswith(f"data.dataset: '{r / 'c-labels-idx1-ubyte'}' is outside the data roots")
