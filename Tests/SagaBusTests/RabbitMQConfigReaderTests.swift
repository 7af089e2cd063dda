#if canImport(Configuration)
    import Configuration
    import SagaCore
    import SagaRabbitMQ
    import Testing

    @Suite("RabbitMQConfiguration from swift-configuration")
    struct RabbitMQConfigReaderTests {
        @Test("keys override the defaults and the URL; the URL is read as a secret")
        func keys() throws {
            let reader = ConfigReader(
                provider: InMemoryProvider(values: [
                    "amqp.url": ConfigValue("amqp://u:pw@h1:5673,h2/v?heartbeat=5", isSecret: true),
                    "amqp.connection.name": "orders",
                    "amqp.heartbeat.seconds": 0,
                    "amqp.operation.timeout.seconds": 2.5,
                    "amqp.confirm.window": 64,
                    "amqp.startup.fail.fast": true,
                    "amqp.shutdown.timeout.seconds": "3",
                ]))
            let c = try RabbitMQConfiguration(reader: reader.scoped(to: "amqp"))
            #expect(c.endpoints == [.init(host: "h1", port: 5673), .init(host: "h2", port: 5672)])
            #expect(c.user == "u" && c.password == "pw" && c.vhost == "v")
            #expect(c.connectionName == "orders" && c.heartbeat == .zero && c.operationTimeout == .milliseconds(2500))
            #expect(c.confirmWindow == 64 && c.failFastOnStartup && c.shutdownTimeout == .seconds(3))
            #expect(c.reconnectDelayMax == .seconds(10))  // default kept
        }

        @Test("a malformed value throws, naming the key; a bad URL never shows its password")
        func malformed() {
            let bad = ConfigReader(provider: InMemoryProvider(values: ["confirm.window": "many"]))
            let error = #expect(throws: SagaError.self) { try RabbitMQConfiguration(reader: bad) }
            #expect(error?.message.contains("confirm.window") == true)

            let badURL = ConfigReader(provider: InMemoryProvider(values: ["url": "amqp://u:s3cret@h:port/v"]))
            let urlError = #expect(throws: BusError.self) { try RabbitMQConfiguration(reader: badURL) }
            #expect(urlError?.description.contains("s3cret") == false)
        }
    }
#endif
