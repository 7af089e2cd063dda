// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "SagaKit",
    platforms: [.macOS(.v15)],
    products: [
        // What a service imports: the runtime and the RabbitMQ bus (re-exports SagaCore).
        .library(name: "Participant", targets: ["Participant"]),
        // The model, the state machine, the bus and store protocols, the in-memory bus and store.
        .library(name: "SagaCore", targets: ["SagaCore"]),
        // The RabbitMQ bus alone (librabbitmq).
        .library(name: "SagaRabbitMQ", targets: ["SagaRabbitMQ"]),
        // Saga stores: pick the one you run.
        .library(name: "SagaSQLite", targets: ["SagaSQLite"]),
        .library(name: "SagaPostgres", targets: ["SagaPostgres"]),
        // For users' tests: run handlers and whole sagas in memory; conformance suites.
        .library(name: "SagaTesting", targets: ["SagaTesting"]),
        // The operator tool's commands as a library (build your own `saga` with your definitions).
        .library(name: "SagaOperator", targets: ["SagaOperator"]),
        // A Prometheus `/metrics` endpoint for any SagaKit process (swift-prometheus, swift-nio).
        .library(name: "SagaPrometheus", targets: ["SagaPrometheus"]),
        .executable(name: "saga", targets: ["SagaCLI"]),
        .executable(name: "order-saga", targets: ["OrderSagaTool"]),
        .executable(name: "sagakit-demo", targets: ["SagaKitDemo"]),
        .executable(name: "order-service", targets: ["ExampleOrderService"]),
        .executable(name: "inventory-service", targets: ["ExampleInventoryService"]),
        .executable(name: "payment-service", targets: ["ExamplePaymentService"]),
        .executable(name: "shipping-service", targets: ["ExampleShippingService"]),
        .executable(name: "SystemBenchmark", targets: ["SystemBenchmark"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.8.0"),  // 1.8: InMemoryLogging (tests)
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.25.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.65.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.9.0"..<"6.0.0"),
    ],
    targets: [
        // MARK: Core model (no I/O)
        .target(
            name: "SagaCore",
            dependencies: [
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            exclude: ["StateMachine/Protocol"],  // the Promela model (scripts/model-check.sh)
            swiftSettings: strict
        ),

        // MARK: RabbitMQ transport
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"])]
        ),
        .target(
            name: "SagaRabbitMQ",
            dependencies: [
                "CRabbitMQ",
                "SagaCore",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),

        // MARK: Stores
        .target(
            name: "SagaSQLite",
            dependencies: [
                "SagaCore",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SagaPostgres",
            dependencies: [
                "SagaCore",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                // Already in the graph through postgres-nio (SCRAM): HMAC for the state seal.
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),

        // MARK: Participant runtime (what services import)
        .target(
            name: "Participant",
            dependencies: [
                "SagaCore",
                "SagaRabbitMQ",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),

        // MARK: The Prometheus endpoint (opt-in: Participant needs neither swift-prometheus nor NIOHTTP1)
        .target(
            name: "SagaPrometheus",
            dependencies: [
                "SagaCore",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),

        // MARK: Testing product (for users' own tests)
        .target(
            name: "SagaTesting",
            dependencies: ["Participant"],
            swiftSettings: strict
        ),

        // MARK: Operator tools: the commands as a library, `saga` as a thin executable
        .target(
            name: "SagaOperator",
            dependencies: [
                "Participant", "SagaSQLite", "SagaPostgres", "SagaConsole",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
            ],
            swiftSettings: strict
        ),
        // The web console `saga console` serves (Hummingbird stays out of Participant's graph).
        .target(
            name: "SagaConsole",
            dependencies: ["Participant", .product(name: "Hummingbird", package: "hummingbird")],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "SagaCLI",
            dependencies: ["SagaOperator"],
            swiftSettings: strict
        ),

        // MARK: The example order system (public products only)
        .target(
            name: "OrderSystemSupport",
            dependencies: [
                "Participant", "SagaSQLite", "SagaPostgres", "SagaPrometheus",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/OrderSystemSupport",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ExampleOrderService",
            dependencies: [
                "OrderSystemSupport", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/OrderSystem/OrderService",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ExampleInventoryService",
            dependencies: [
                "OrderSystemSupport", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/InventoryService",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ExamplePaymentService",
            dependencies: [
                "OrderSystemSupport", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/PaymentService",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ExampleShippingService",
            dependencies: [
                "OrderSystemSupport", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/ShippingService",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "SagaKitDemo",
            dependencies: [
                "OrderSystemSupport", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/Demo",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "OrderSagaTool",
            dependencies: ["OrderSystemSupport", "SagaOperator"],
            path: "Examples/OrderSystem/OrderSagaTool",
            swiftSettings: strict
        ),

        // MARK: Test support (server fixtures shared by tests and benchmarks)
        .target(
            name: "SagaTestSupport",
            dependencies: ["SagaCore"],
            swiftSettings: strict
        ),

        // MARK: Benchmarks (executables that print figures; never run by the tests)
        .target(
            name: "CBusLoop",
            dependencies: ["CRabbitMQ"],
            path: "Benchmarks/CBusLoop"
        ),
        .executableTarget(
            name: "BusBenchmark",
            dependencies: ["SagaRabbitMQ", "CBusLoop", "SagaTestSupport"],
            path: "Benchmarks/BusBenchmark",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "StoreBenchmark",
            dependencies: ["SagaCore", "SagaSQLite", "SagaPostgres", "SagaTestSupport"],
            path: "Benchmarks/StoreBenchmark",
            swiftSettings: strict
        ),

        .executableTarget(
            name: "SagaBenchmark",
            dependencies: [
                "Participant", "SagaSQLite", "SagaPostgres", "SagaTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/SagaBenchmark",
            swiftSettings: strict
        ),
        // The like-for-like benchmark of issue 13: three participant processes, a local write per step.
        .executableTarget(
            name: "SystemBenchmark",
            dependencies: [
                "Participant", "SagaSQLite", "SagaPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            path: "Benchmarks/SystemBenchmark",
            exclude: ["run_sagakit.py"],  // the yardstick's slot-B adapter (Docs/Operations.md, "Throughput")
            swiftSettings: strict
        ),

        // MARK: Tests
        .executableTarget(
            name: "ParticipantTestHost",
            dependencies: [
                "Participant", "SagaSQLite", "SagaPostgres", "SagaTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Tests/ParticipantTestHost",
            swiftSettings: strict
        ),
        // Seeds a SQLite store with sagas in every status for the console's browser test.
        .executableTarget(
            name: "ConsoleFixture",
            dependencies: ["Participant", "SagaSQLite"],
            path: "Tests/ConsoleFixture",
            swiftSettings: strict
        ),
        .testTarget(
            name: "SagaCoreTests",
            dependencies: ["SagaCore"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SagaBusTests",
            dependencies: [
                "SagaCore", "SagaRabbitMQ", "SagaTestSupport",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SagaStoreTests",
            dependencies: ["SagaCore", "SagaSQLite", "SagaPostgres", "SagaTestSupport", "SagaTesting"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SagaTestingTests",
            dependencies: ["SagaTesting", "Participant"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ParticipantTests",
            dependencies: [
                "Participant", "SagaSQLite", "SagaPostgres", "SagaTestSupport", "SagaTesting", "SagaPrometheus", "SagaConsole",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Configuration", package: "swift-configuration"),
            ],
            swiftSettings: strict
        ),
    ]
)
