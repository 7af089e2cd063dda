#pragma once
// The parts of librabbitmq (rabbitmq-c) that SagaRabbitMQ uses, plus static inline wrappers for what Swift
// cannot call directly. Only SagaRabbitMQ's internal CBridge folder imports this module.
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp.h>
#include <rabbitmq-c/framing.h>
#include <rabbitmq-c/ssl_socket.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#endif
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <unistd.h>

/// `amqp_login_with_properties` is C-variadic; this is its SASL PLAIN form. `properties` are client properties
/// (for example `connection_name`); librabbitmq adds its own capabilities to them.
static inline amqp_rpc_reply_t sagakit_amqp_login_plain(amqp_connection_state_t state, const char *vhost,
                                                        int channel_max, int frame_max, int heartbeat,
                                                        const amqp_table_t *properties, const char *user,
                                                        const char *password) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, properties,
                                      AMQP_SASL_METHOD_PLAIN, user, password);
}

/// A non-blocking eventfd used to wake a connection thread that waits in poll().
static inline int sagakit_eventfd_create(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

/// Adds one to the eventfd's counter (wakes the poller).
static inline void sagakit_eventfd_signal(int fd) {
    eventfd_t one = 1;
    (void)eventfd_write(fd, one);
}

/// Resets the eventfd's counter.
static inline void sagakit_eventfd_drain(int fd) {
    eventfd_t value;
    (void)eventfd_read(fd, &value);
}

/// Sets or clears TCP_CORK on a socket: while set, the kernel sends only full segments; clearing
/// it sends what is held at once. Returns setsockopt's result.
static inline int sagakit_set_cork(int fd, int on) {
    return setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
}

/// Waits until `socket_fd` is readable or `wake_fd` is signalled, at most `timeout_ms`.
/// Returns a bit set: 1 = socket readable (or in error), 2 = woken; 0 on timeout; -1 on error.
static inline int sagakit_poll2(int socket_fd, int wake_fd, int timeout_ms) {
    struct pollfd fds[2];
    int n = 0;
    if (socket_fd >= 0) {
        fds[n].fd = socket_fd;
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        n++;
    }
    fds[n].fd = wake_fd;
    fds[n].events = POLLIN;
    fds[n].revents = 0;
    n++;
    int rc = poll(fds, (nfds_t)n, timeout_ms);
    if (rc < 0) return -1;
    int result = 0;
    if (socket_fd >= 0 && fds[0].revents != 0) result |= 1;
    if (fds[n - 1].revents != 0) result |= 2;
    return result;
}

/// Names the calling thread as `top -H`, `perf` and debuggers show it (Linux keeps at most 15
/// bytes and refuses longer names). Foundation's `Thread.name` does not reach the OS thread here.
/// `PR_SET_NAME` names the calling thread; `prctl` is variadic, which Swift cannot call.
static inline int sagakit_name_current_thread(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL);
}
