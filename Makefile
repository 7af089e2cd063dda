# SagaKit: the two commands of the README, and housekeeping.
#   make demo                      the example order system end to end (ARGS="--sagas 1000 --chaos")
#   make test                      the test suites (starts what they need)
.PHONY: demo test format clean

ARGS ?=

demo:
	scripts/demo.sh $(ARGS)

test:
	scripts/test.sh

format:
	swift format -i -r -p Package.swift Sources Tests Examples Benchmarks

clean:
	rm -rf .build .local/demo
