// The saga state machine is being written.
