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
        .library(name: "Participant", targets: ["Participant"]),
        .library(name: "SagaCore", targets: ["SagaCore"]),
        .library(name: "SagaRabbitMQ", targets: ["SagaRabbitMQ"]),
        .library(name: "SagaSQLite", targets: ["SagaSQLite"]),
        .library(name: "SagaPostgres", targets: ["SagaPostgres"]),
        .executable(name: "saga", targets: ["SagaCLI"]),
        .executable(name: "sagakit-demo", targets: ["SagaKitDemo"]),
        .executable(name: "order-service", targets: ["OrderService"]),
        .executable(name: "inventory-service", targets: ["InventoryService"]),
        .executable(name: "payment-service", targets: ["PaymentService"]),
        .executable(name: "shipping-service", targets: ["ShippingService"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.25.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0"),
    ],
    targets: [
        // MARK: Core model (no I/O)
        .target(
            name: "SagaCore",
            dependencies: [.product(name: "Logging", package: "swift-log")],
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
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // MARK: Stores
        .target(
            name: "SagaSQLite",
            dependencies: [
                "SagaCore",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SagaPostgres",
            dependencies: [
                "SagaCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // MARK: Participant runtime (what services import)
        .target(
            name: "Participant",
            dependencies: [
                "SagaCore",
                "SagaRabbitMQ",
                "SagaSQLite",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: strict
        ),

        // MARK: App support, the example order system, the demo driver and the `saga` CLI
        .target(
            name: "SagaKitApp",
            dependencies: [
                "Participant",
                "SagaPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "OrderService",
            dependencies: ["SagaKitApp", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Examples/OrderSystem/OrderService",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "InventoryService",
            dependencies: [
                "SagaKitApp", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/InventoryService",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "PaymentService",
            dependencies: [
                "SagaKitApp", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/PaymentService",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ShippingService",
            dependencies: [
                "SagaKitApp", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/ShippingService",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "SagaKitDemo",
            dependencies: [
                "SagaKitApp", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Examples/OrderSystem/Demo",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "SagaCLI",
            dependencies: ["SagaKitApp", "Participant", .product(name: "ArgumentParser", package: "swift-argument-parser")],
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
                "Participant", "SagaPostgres", "SagaTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/SagaBenchmark",
            swiftSettings: strict
        ),

        // MARK: Tests
        .executableTarget(
            name: "ParticipantTestHost",
            dependencies: [
                "Participant", "SagaPostgres", "SagaTestSupport",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Tests/ParticipantTestHost",
            swiftSettings: strict
        ),
        .testTarget(
            name: "SagaCoreTests",
            dependencies: ["SagaCore"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SagaBusTests",
            dependencies: ["SagaCore", "SagaRabbitMQ", "SagaTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SagaStoreTests",
            dependencies: ["SagaCore", "SagaSQLite", "SagaPostgres", "SagaTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ParticipantTests",
            dependencies: [
                "Participant", "SagaPostgres", "SagaTestSupport",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict
        ),
    ]
)
