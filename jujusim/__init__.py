"""jujusim: a multi-unit Juju simulator that runs real charm classes under Juju's event rules."""
