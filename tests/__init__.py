"""The test suite of esper, actors and schemas, with the harnesses and fakes its tests share."""
