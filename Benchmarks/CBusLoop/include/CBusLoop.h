#pragma once
// A minimal C publish-with-confirms loop and consume+ack loop on librabbitmq, the baseline BusBenchmark
// compares the Swift bus with. Not part of SagaKit's API.
#include <stdint.h>

typedef struct {
    double seconds;      // wall time of the measured loop
    long messages;       // messages confirmed (publish) or consumed and acknowledged (consume)
    char error[256];     // empty on success
} cbus_result;

typedef struct {
    const char *host;
    int port;
    const char *user;
    const char *password;
    const char *vhost;
} cbus_broker;

/// Publishes `count` persistent, mandatory messages of `size` bytes to `queue` through the default exchange,
/// keeping at most `window` unconfirmed. Returns 0 on success.
int cbus_publish(const cbus_broker *broker, const char *queue, long count, int size, int window, cbus_result *out);

/// Consumes `count` messages from `queue` with `prefetch` and acknowledges each one. Returns 0 on success.
int cbus_consume(const cbus_broker *broker, const char *queue, long count, int prefetch, cbus_result *out);
