#pragma once
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <amqp_framing.h>
#endif
