"""Pure planning: Nodes -> arch groups -> a plan -> the RayService and the status. No I/O: every
function here is a function of its arguments, tested without a cluster."""
