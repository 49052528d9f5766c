"""cli.run: what every absl entry point does around its work."""

import pytest
from absl import app

from hemnet_jax import cli


def test_returns_the_work_result():
  assert cli.run(["prog"], lambda: 42) == 42


def test_stray_arguments_are_a_usage_error_and_nothing_runs():
  ran = []
  with pytest.raises(app.UsageError, match="unexpected arguments: a b"):
    cli.run(["prog", "a", "b"], lambda: ran.append(1))
  assert not ran


@pytest.mark.parametrize("error", [ValueError("config.hem.eta: must be in (0, 1]"),
                                   FileNotFoundError("no checkpoint in /x"),
                                   FloatingPointError("loss is nan at step 3")])
def test_user_errors_are_one_line_and_exit_1(error, capsys):
  def work():
    raise error
  with pytest.raises(SystemExit) as e:
    cli.run(["prog"], work)
  assert e.value.code == 1
  assert capsys.readouterr().err == f"error: {error}\n"


def test_other_errors_keep_their_traceback():
  def work():
    raise KeyError("a bug")
  with pytest.raises(KeyError):
    cli.run(["prog"], work)
