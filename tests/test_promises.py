"""Every promise the README makes about errors, files and output, with the test that keeps it.

Each entry is a phrase the README says (found in it as written, whitespace aside) and the
tests that hold ssal to it. A promise reworded or dropped in the README, or a test renamed or
removed, fails here, so a promise never outlives its test unnoticed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROMISES: dict[str, list[str]] = {
    # what a command prints
    "What `ssal fit` prints is one line per thing that happens, on stderr": [
        "test_output.py::test_fit_says_what_it_does_and_nothing_else",
    ],
    "Tables print to fit the terminal, or as tab-separated lines when the output is piped": [
        "test_output.py::test_evaluate_prints_a_table_that_survives_a_pipe",
    ],
    "A mistake in a config key or value is one line that names the key, whether it came from "
    "the command line or which config file, and the key that was probably meant": [
        "test_output.py::test_config_values_of_the_wrong_kind_are_one_line_in_our_words",
        "test_output.py::test_unknown_keys_get_suggestions_from_the_class_in_use",
        "test_output.py::test_a_bad_data_dir_is_placed_where_it_was_given",
    ],
    "A key of the flat layout before 0.3 is one line naming its new place": [
        "test_output.py::test_config_values_of_the_wrong_kind_are_one_line_in_our_words",
        "test_output.py::test_a_groupings_file_given_the_flat_way_names_the_new_key",
    ],
    # errors
    "User errors (missing or truncated data files, a groupings file for another number of "
    "classes, a corrupted or foreign checkpoint, an unknown model) end in one line on stderr "
    "and exit code 2": [
        "test_output.py::test_user_errors_are_one_line",
        "test_cli.py::test_errors_are_one_line",
        "test_safety.py::test_missing_dataset_files",
        "test_train.py::test_fit_with_bad_groupings_file_is_one_line",
        "test_train.py::test_cli_errors_for_checkpoints_are_one_line",
        "test_external.py::test_unknown_names_are_one_line_with_close_matches",
    ],
    "Anything else is a bug in ssal: its traceback, then one line saying so": [
        "test_cli.py::test_a_user_error_is_one_line_and_a_bare_value_error_is_a_bug",
    ],
    "older schemas (never released) are refused in one line": [
        "test_predict_images.py::test_cards_of_older_schemas_are_refused_in_one_line",
    ],
    "a tensor is no feature map, one line names the position": [
        "test_tokens.py::test_unreadable_tensors_and_positions_are_one_line",
        "test_model.py::test_unused_or_flat_position_errors",
        "test_train.py::test_a_model_that_cannot_be_built_fails_before_the_probe_trains",
    ],
    "A loss that turns NaN or infinite stops the run with one line naming the step; the last "
    "good checkpoint is kept": [
        "test_safety.py::test_nan_loss_stops_and_keeps_last_good_checkpoint",
    ],
    "else ends in one line naming the file (and the line)": [
        "test_train.py::test_fit_with_bad_groupings_file_is_one_line",
        "test_grouping.py::test_groupings_for_other_or_reordered_class_names_are_refused",
    ],
    "an unknown name is one line with the closest names": [
        "test_external.py::test_unknown_names_are_one_line_with_close_matches",
    ],
    "reading it ends in a correct result or one `ssal: error:` line": [
        "test_fuzz.py::test_mutated_files",
        "test_fuzz.py::test_crafted_files",
    ],
    # files
    "The run folder appears only once the data has loaded": [
        "test_output.py::test_user_errors_are_one_line",
        "test_output.py::test_runs_go_under_default_root_dir",
    ],
    "only when the run finishes": [
        "test_predict_images.py::test_predict_that_reads_no_image_writes_no_file",
    ],
    "A file that cannot be decoded is skipped with one line": [
        "test_predict_images.py::test_predict_a_folder_into_jsonl_and_csv_skipping_an_unreadable_file",
    ],
    "A second `ssal demo` into the same folder refuses to overwrite the first": [
        "test_demo.py::test_demo_short_run_writes_everything",
    ],
    # runs that survive
    "`metrics.csv` keeps its rows up to the checkpoint": [
        "test_loggers.py::test_resume_keeps_rows_up_to_the_checkpoint_and_none_of_the_interrupted_epoch",
        "test_resume.py::test_sigkill_mid_epoch_then_resume_last",
    ],
    "A run of another config is never continued": [
        "test_resume.py::test_interrupt_before_the_first_checkpoint_never_points_at_another_run",
        "test_resume.py::test_config_differences_ignore_only_what_a_resume_may_change",
    ],
    "Ctrl-C stops a run with exit code 130 and prints the command that resumes that run": [
        "test_output.py::test_ctrl_c_exits_130_and_says_how_to_resume",
        "test_resume.py::test_after_interrupt_names_the_run_to_resume_or_none",
    ],
    "so a kill while saving leaves the previous one loadable": [
        "test_resume.py::test_sigkill_while_saving_keeps_a_loadable_checkpoint",
    ],
    "Nothing unpickles code": [
        "test_safety.py::test_export_round_trip_without_pickle",
        "test_fuzz.py::test_crafted_files",
    ],
    # groupings
    "is refused in one line naming the file and the first class that differs": [
        "test_grouping.py::test_groupings_for_other_or_reordered_class_names_are_refused",
        "test_grouping.py::test_fit_refuses_groupings_made_for_other_classes",
    ],
    # the README itself
    "The README's commands and Python snippets are run by the test suite": [
        "test_readme.py::test_readme_command",
        "test_readme.py::test_readme_python_snippet",
    ],
}


def _readme() -> str:
    return " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())


def _tests_defined() -> set[str]:
    """``file.py::name`` of every test function in tests/."""
    found = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found |= {f"{path.name}::{n.name}" for n in tree.body if isinstance(n, ast.FunctionDef)}
    return found


@pytest.mark.parametrize("promise", list(PROMISES))
def test_the_readme_makes_this_promise(promise):
    assert " ".join(promise.split()) in _readme(), f"README no longer says: {promise!r}"


def test_every_promise_has_tests_that_exist():
    defined = _tests_defined()
    missing = {t for tests in PROMISES.values() for t in tests if t not in defined}
    assert not missing, f"promises name tests that do not exist: {sorted(missing)}"
    assert all(PROMISES.values())


def test_no_one_line_promise_of_the_readme_is_left_off_this_list():
    """Each README sentence that promises "one line" or an exit code is covered by an entry
    here (an entry's phrase lies in it)."""
    text = _readme()
    sentences = re.split(r"(?<=[.;])\s+(?=[A-Z`])", text)
    promising = [s for s in sentences if re.search(r"\bone line\b|exit code \d", s)]
    uncovered = [s[:160] for s in promising if not any(" ".join(p.split()) in s for p in PROMISES)]
    assert not uncovered, "README promises without an entry in PROMISES:\n" + "\n".join(uncovered)
