"""Static checks of the public generic API: mypy evaluates its assert_type lines; pytest runs them too."""
