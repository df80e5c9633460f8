"""Config composition: resolvers and `compose_run`, user config folders (the search path), the rule table."""
