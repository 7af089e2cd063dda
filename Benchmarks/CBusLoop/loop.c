// The baseline for BusBenchmark: the simplest correct pipelined loops on librabbitmq 0.11, one thread, blocking
// calls, no abstraction. Written the way a C programmer would write a fast publisher/consumer by hand.
#include "CBusLoop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#endif

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(cbus_result *out, const char *what) {
    snprintf(out->error, sizeof out->error, "%s", what);
    return -1;
}

static amqp_connection_state_t open_connection(const cbus_broker *b, cbus_result *out) {
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (!socket || amqp_socket_open(socket, b->host, b->port) != AMQP_STATUS_OK) {
        fail(out, "cannot open a TCP connection");
        amqp_destroy_connection(conn);
        return NULL;
    }
    amqp_rpc_reply_t r = amqp_login(conn, b->vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, b->user, b->password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fail(out, "login failed");
        amqp_destroy_connection(conn);
        return NULL;
    }
    amqp_channel_open(conn, 1);
    if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
        fail(out, "channel.open failed");
        amqp_destroy_connection(conn);
        return NULL;
    }
    return conn;
}

static void close_connection(amqp_connection_state_t conn) {
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}

int cbus_publish(const cbus_broker *b, const char *queue, long count, int size, int window, cbus_result *out) {
    memset(out, 0, sizeof *out);
    amqp_connection_state_t conn = open_connection(b, out);
    if (!conn) return -1;
    amqp_confirm_select(conn, 1);
    if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
        close_connection(conn);
        return fail(out, "confirm.select failed");
    }
    char *body = malloc((size_t)size);
    memset(body, 'x', (size_t)size);
    unsigned char *acked = calloc((size_t)count + 2, 1);
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = 2;
    amqp_bytes_t body_bytes = {.len = (size_t)size, .bytes = body};

    long sent = 0, confirmed = 0, lowest = 1;  // every tag < lowest is confirmed
    int status = 0;
    double start = now_seconds();
    while (confirmed < count) {
        while (sent < count && sent - confirmed < window) {
            if (amqp_basic_publish(conn, 1, amqp_empty_bytes, amqp_cstring_bytes(queue), 1, 0, &props, body_bytes) !=
                AMQP_STATUS_OK) {
                status = fail(out, "publish failed");
                goto done;
            }
            sent++;
        }
        do {
            amqp_frame_t frame;
            if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) {
                status = fail(out, "connection lost");
                goto done;
            }
            if (frame.frame_type != AMQP_FRAME_METHOD) continue;
            if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
                amqp_basic_ack_t *ack = frame.payload.method.decoded;
                long tag = (long)ack->delivery_tag;
                if (ack->multiple) {
                    for (long t = lowest; t <= tag; t++) {
                        if (!acked[t]) { acked[t] = 1; confirmed++; }
                    }
                } else if (!acked[tag]) {
                    acked[tag] = 1;
                    confirmed++;
                }
                while (lowest <= count && acked[lowest]) lowest++;
            } else if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
                status = fail(out, "broker nacked a message");
                goto done;
            } else if (frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                       frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
                status = fail(out, "broker closed the channel");
                goto done;
            }
        } while (amqp_frames_enqueued(conn) || amqp_data_in_buffer(conn));
        amqp_maybe_release_buffers(conn);
    }
done:
    out->seconds = now_seconds() - start;
    out->messages = confirmed;
    free(body);
    free(acked);
    close_connection(conn);
    return status;
}

int cbus_consume(const cbus_broker *b, const char *queue, long count, int prefetch, cbus_result *out) {
    memset(out, 0, sizeof *out);
    amqp_connection_state_t conn = open_connection(b, out);
    if (!conn) return -1;
    amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
    amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
        close_connection(conn);
        return fail(out, "basic.consume failed");
    }
    long received = 0;
    int status = 0;
    double start = now_seconds();
    while (received < count) {
        amqp_envelope_t envelope;
        amqp_maybe_release_buffers(conn);
        amqp_rpc_reply_t r = amqp_consume_message(conn, &envelope, NULL, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            status = fail(out, "consume failed");
            break;
        }
        if (amqp_basic_ack(conn, 1, envelope.delivery_tag, 0) != AMQP_STATUS_OK) {
            amqp_destroy_envelope(&envelope);
            status = fail(out, "ack failed");
            break;
        }
        amqp_destroy_envelope(&envelope);
        received++;
    }
    out->seconds = now_seconds() - start;
    out->messages = received;
    close_connection(conn);
    return status;
}
