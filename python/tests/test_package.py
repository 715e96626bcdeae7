"""The installed package: its version, its public names."""

import importlib.metadata
import unittest

import abc_operator


class Package(unittest.TestCase):
    def test_the_distribution_has_the_module_version(self):
        self.assertEqual(importlib.metadata.version("abc-operator"), abc_operator.__version__)

    def test_what_master_scripts_use_is_public(self):
        for name in ("run", "sampler", "database_url", "ResumeError", "RESUME_REFUSED_EXIT_CODE"):
            self.assertIn(name, abc_operator.__all__)
        self.assertEqual(abc_operator.RESUME_REFUSED_EXIT_CODE, 65)


if __name__ == "__main__":
    unittest.main()
