"""One cell, measured or traced, in or out of process: step, train, trace, fit, measure, state
bytes, worker, runner, and the typed outcome record."""
