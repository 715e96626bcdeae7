"""`abc_operator.run` resumes only the same analysis, with real pyABC runs in a real results
database: a changed setting is refused and named, with exit 65 and the database untouched;
`new=True` adds a run beside the unfinished one."""

import os
import unittest

import pyabc

import abc_operator
from analysis import (
    OBSERVED,
    POPULATION_SIZE,
    RedisServer,
    ResultsFolder,
    analysis,
    other_model,
    refused,
    uniform_prior,
)


class Resume(unittest.TestCase):
    def setUp(self):
        self.results = ResultsFolder()
        self.addCleanup(self.results.close)

    def interrupted_run(self, **settings):
        """A database with one unfinished run of two generations (a master killed after
        storing generation 1), of `analysis(**settings)`."""
        abc_operator.run(analysis(**settings), self.results.db, OBSERVED, max_nr_populations=2)
        self.results.interrupt()
        self.assertEqual(self.results.populations(1), [(0, POPULATION_SIZE), (1, POPULATION_SIZE)])

    def assert_refused(self, changed, named, **before):
        """A resume of `analysis(**changed)` on a run of `analysis(**before)` exits with 65,
        names each phrase of `named` and leaves the database as it was."""
        self.interrupted_run(**before)
        state = self.results.state()
        message = refused(
            self,
            lambda: abc_operator.run(
                analysis(**changed), self.results.db, OBSERVED, max_nr_populations=4
            ),
        )
        self.assertIn("ResumeError", message)
        self.assertIn(self.results.path, message, "the message names the database")
        for phrase in named:
            self.assertIn(phrase, message)
        self.assertEqual(self.results.state(), state, "nothing in the database was written")

    def test_the_same_analysis_resumes_from_its_next_generation(self):
        self.interrupted_run(eps=pyabc.ListEpsilon([3.0, 2.0, 1.0]))
        history = abc_operator.run(
            analysis(eps=pyabc.ListEpsilon([3.0, 2.0, 1.0])),
            self.results.db,
            OBSERVED,
            max_nr_populations=3,
        )
        self.assertEqual(history.id, 1)
        self.assertEqual(
            self.results.populations(1),
            [(0, POPULATION_SIZE), (1, POPULATION_SIZE), (2, POPULATION_SIZE)],
        )
        self.assertEqual([(i, done) for i, done, _ in self.results.runs()], [(1, True)])

    def test_a_changed_population_size_is_refused_and_named(self):
        self.assert_refused(
            {"population_size": POPULATION_SIZE - 5},
            [f"population size: database {POPULATION_SIZE}, script {POPULATION_SIZE - 5}"],
        )

    def test_a_changed_population_strategy_is_refused_and_named(self):
        self.assert_refused(
            {"population_size": pyabc.AdaptivePopulationSize(POPULATION_SIZE)},
            ["population strategy: database ConstantPopulationSize, script AdaptivePopulationSize"],
        )

    def test_a_changed_prior_is_refused_and_named(self):
        self.assert_refused(
            {"prior": pyabc.Distribution(mu=pyabc.RV("norm", 0, 1))},
            [
                "prior of mu: database <RV name=uniform, args=(-5, 10), kwargs={}>, "
                "script <RV name=norm, args=(0, 1), kwargs={}>"
            ],
        )

    def test_a_prior_with_another_parameter_is_refused_and_named(self):
        prior = uniform_prior()
        prior["sigma"] = pyabc.RV("uniform", 0, 1)
        self.assert_refused(
            {"prior": prior},
            ["prior of sigma: database (none), script <RV name=uniform, args=(0, 1)"],
        )

    def test_a_changed_distance_is_refused_and_named(self):
        self.assert_refused(
            {"distance_function": pyabc.PNormDistance(p=1)},
            ["distance: database distance, script PNormDistance"],
        )

    def test_a_changed_epsilon_is_refused_and_named(self):
        self.assert_refused(
            {"eps": pyabc.MedianEpsilon(initial_epsilon=5.0)},
            ["epsilon initial_epsilon: database from_sample, script 5.0"],
        )

    def test_a_changed_epsilon_schedule_is_refused_and_named(self):
        self.assert_refused(
            {"eps": pyabc.ListEpsilon([3.0, 2.0, 0.5])},
            ["epsilon epsilon_values: database [3.0, 2.0, 1.0], script [3.0, 2.0, 0.5]"],
            eps=pyabc.ListEpsilon([3.0, 2.0, 1.0]),
        )

    def test_another_model_is_refused_and_named(self):
        self.assert_refused(
            {"models": other_model}, ["models: database ['model'], script ['other_model']"]
        )

    def test_every_change_is_named_at_once(self):
        self.assert_refused(
            {"population_size": 15, "eps": pyabc.MedianEpsilon(initial_epsilon=5.0)},
            ["population size: database 20, script 15", "epsilon initial_epsilon"],
        )

    def test_other_observed_data_is_refused_as_before(self):
        self.interrupted_run()
        state = self.results.state()
        message = refused(
            self,
            lambda: abc_operator.run(analysis(), self.results.db, {"x": 2.0}),
        )
        self.assertIn("other observed data", message)
        self.assertEqual(self.results.state(), state)

    def test_new_adds_a_run_and_leaves_the_unfinished_one(self):
        self.interrupted_run()
        before = self.results.populations(1)
        history = abc_operator.run(
            analysis(population_size=15),
            self.results.db,
            OBSERVED,
            new=True,
            gt_par={"mu": 1.0},
            meta_info={"note": "smaller"},
            max_nr_populations=1,
        )
        self.assertEqual(history.id, 2)
        runs = self.results.runs()
        self.assertEqual([(i, done) for i, done, _ in runs], [(1, False), (2, True)])
        self.assertEqual(self.results.populations(1), before, "the unfinished run is as it was")
        self.assertEqual(self.results.populations(2), [(0, 15)])
        self.assertEqual(runs[1][2], str({"note": "smaller"}), "meta_info went to abc.new")
        stored = pyabc.History("sqlite:///" + self.results.path, _id=2)
        self.assertEqual(stored.get_ground_truth_parameter(), {"mu": 1.0}, "gt_par too")

    def test_the_run_after_new_resumes_the_newest(self):
        self.interrupted_run()
        abc_operator.run(
            analysis(population_size=15), self.results.db, OBSERVED, new=True,
            max_nr_populations=2,
        )
        self.results.interrupt()
        history = abc_operator.run(
            analysis(population_size=15), self.results.db, OBSERVED, max_nr_populations=3
        )
        self.assertEqual(history.id, 2)
        self.assertEqual(self.results.populations(2), [(0, 15), (1, 15), (2, 15)])


class ResumeWithRedis(unittest.TestCase):
    """The refusal as the operator and `abc-operator run` learn it: from the master's start
    record in a real Redis."""

    def setUp(self):
        self.results = ResultsFolder()
        self.addCleanup(self.results.close)
        self.redis = RedisServer()
        self.addCleanup(self.redis.close)
        for name, value in self.redis.environment().items():
            self.addCleanup(os.environ.__setitem__, name, os.environ[name]) if name in os.environ \
                else self.addCleanup(os.environ.pop, name, None)
            os.environ[name] = value

    def test_a_refused_resume_is_recorded_with_what_changed(self):
        abc_operator.run(analysis(), self.results.db, OBSERVED, max_nr_populations=2)
        self.results.interrupt()
        state = self.results.state()
        sampler = abc_operator.sampler()  # from the environment, as a master's
        # Two generations, both stored: a resume that wrongly went on would find the run
        # complete instead of waiting for workers that this test does not start.
        refused(
            self,
            lambda: abc_operator.run(
                analysis(population_size=15, sampler=sampler), self.results.db, OBSERVED,
                max_nr_populations=2,
            ),
        )
        start = {
            key.decode(): value.decode()
            for key, value in self.redis.client.hgetall(abc_operator.START_KEY).items()
        }
        self.assertEqual(start["outcome"], "refused")
        self.assertEqual(start["module_version"], abc_operator.__version__)
        self.assertIn("population size: database 20, script 15", start["cause"])
        self.assertFalse(self.redis.client.exists(abc_operator.RESUME_KEY))
        self.assertEqual(self.results.state(), state)


if __name__ == "__main__":
    unittest.main()
